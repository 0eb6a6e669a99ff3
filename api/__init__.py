"""The HTTP API and dashboard: stateless Starlette handlers that read state and write intents.

It never imports `runner/`. Build the ASGI app with `api.app.create_app()`.
"""
