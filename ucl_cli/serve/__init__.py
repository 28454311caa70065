"""`ucl serve`: the query pipeline behind a local HTTP API and a one-page UI.

The models, the bridge bank and the served collections are loaded once (`state.Served`) and
every request is scored by `ucl_cli.bridge.search`, the call under `ucl query`, so the API's
hits are the CLI's. Modules: `state` (the warm models and the one lock around scoring),
`results` (a report as JSON), `media` (a collection file by name and row, with HTTP ranges),
`limits` (the request-body cap), `app` (the routes), `server` (uvicorn and the bind address).
Nothing here imports FastAPI at package import: `ucl --help` stays fast without the extra.
"""

INSTALL_HINT = "pip install 'ucl-cli[serve]'"
