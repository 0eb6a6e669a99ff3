"""Vercel function: the Loopdeck API and dashboard as one ASGI app (docs/deploy.md).

The Vercel project's root directory is deploy/vercel; requirements.txt installs Loopdeck (the
`api`, `shared` packages) from this repository. This directory has no __init__.py on purpose:
`api` here is Vercel's functions folder, and the installed `api` package (a regular package)
wins the import over it. vercel.json rewrites every path to this function.
"""

from api.serverless import serverless_app

app = serverless_app()
