"""AWS Lambda function (API Gateway HTTP API or REST API, or a function URL) through Mangum.

Package: `pip install --target build/ "loopdeck[lambda] @ ./" "psycopg[binary]"`, add this file,
zip, and set the handler to `handler.handler` (docs/deploy.md). Lambda runs no ASGI lifespan
here (`lifespan="off"`): the store comes up on the first request.
"""

import asyncio

from mangum import Mangum

from api.serverless import serverless_app

app = serverless_app()
# Made on the first event, not at import: Mangum sets up an event loop when it is built, and
# Python ≥ 3.12 warns (3.14 fails) when it finds none in the thread. One per instance.
loop: asyncio.AbstractEventLoop | None = None
adapter: Mangum | None = None


def handler(event: dict, context: object) -> dict:
    global loop, adapter
    if adapter is None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        adapter = Mangum(app, lifespan="off")
    return adapter(event, context)
