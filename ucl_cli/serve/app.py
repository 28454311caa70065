"""The HTTP API and the page, as a FastAPI application over one `Served` state.

    GET  /                               the page (static files under ucl_cli/serve/static)
    GET  /api/banks                      the bridge bank, the served collections, the limits
    GET  /api/collections/{name}         a collection's rows (offset, limit): path and media URL
    POST /api/search                     rank the served collections for an uploaded file
    POST /api/search/item                ... for the file of a served collection's row
    GET  /api/media/{name}/{row}         that row's file, with HTTP range requests
    GET  /openapi.json                   the schema (no docs UI: it would load from a CDN)

A search is handed to `Served`'s one scoring thread and awaited, so the event loop keeps
serving media and the page meanwhile.
Every error is JSON `{"error": "..."}`: 400 for a request that cannot work as asked, 404 for a
collection, row or file that is not there, 413 for an upload over the limit, 422 for an
unreadable upload (the CLI's "NAME: reason") or malformed fields, 500 for a server-side fault
(a bank file changed on disk).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, File, Form, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.middleware.trustedhost import TrustedHostMiddleware

from ucl_cli import __version__
from ucl_cli.bridge.methods import DEFAULT_METHOD, METHOD_NAMES
from ucl_cli.errors import InputFileError, UclError, UsageError
from ucl_cli.serve.limits import BodyLimit
from ucl_cli.serve.media import media_response
from ucl_cli.serve.results import answer_json, media_url
from ucl_cli.serve.state import MAX_EXPLAIN, MAX_TOP, NotServedError, SearchRequest, Served

STATIC = Path(__file__).resolve().parent / "static"
DEFAULT_UPLOAD_LIMIT = 64_000_000
# Host names a loopback server answers to: a page elsewhere that rebinds its own name to
# 127.0.0.1 (DNS rebinding) is refused instead of reading the collections.
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1", "[::1]")
MAX_LISTED = 1000


class ItemSearch(BaseModel):
    """Search with the file of a served collection's row as the query."""

    collection: str = Field(description="a served collection")
    row: int = Field(ge=0, description="the row whose file is the query")
    method: str = Field(DEFAULT_METHOD, description="|".join(METHOD_NAMES))
    top: int = Field(10, ge=1, le=MAX_TOP)
    explain: int = Field(0, ge=0, le=MAX_EXPLAIN)
    collections: list[str] | None = Field(
        None, description="collections to rank (default: the served ones of the other modality)"
    )


def create_app(
    served: Served,
    *,
    max_upload_bytes: int = DEFAULT_UPLOAD_LIMIT,
    allowed_hosts: tuple[str, ...] | None = LOOPBACK_HOSTS,
) -> Any:
    """The application; `allowed_hosts` None answers any Host (a server bound beyond
    loopback, whose clients name it by whatever address they reach)."""
    app = FastAPI(
        title="ucl serve",
        version=__version__,
        description="Zero-shot image<->audio search through a bank of bridge texts.",
        docs_url=None,
        redoc_url=None,
    )
    _add_errors(app)
    _add_routes(app, served, max_upload_bytes)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    if allowed_hosts is not None:
        app.add_middleware(TrustedHostMiddleware, allowed_hosts=list(allowed_hosts))
    app.add_middleware(BodyLimit, limit=max_upload_bytes)
    return app


def _add_routes(app: Any, served: Served, max_upload_bytes: int) -> None:
    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html", media_type="text/html")

    @app.get("/api/banks", summary="The bridge bank, the served collections and the limits")
    def banks() -> dict[str, Any]:
        return {
            "bank": _describe(served.bank),
            "collections": [
                {**_describe(c), "items": f"/api/collections/{quote(c.name, safe='')}"}
                for c in served.collections.values()
            ],
            "methods": list(METHOD_NAMES),
            "limits": {
                "max_upload_bytes": max_upload_bytes,
                "max_top": MAX_TOP,
                "max_explain": MAX_EXPLAIN,
            },
        }

    @app.get("/api/collections/{name}", summary="A served collection's rows")
    def items(
        name: str,
        offset: int = Query(0, ge=0),
        limit: int = Query(50, ge=1, le=MAX_LISTED),
    ) -> dict[str, Any]:
        collection = served.collection(name)
        rows = range(offset, min(offset + limit, len(collection)))
        return {
            "collection": collection.name,
            "modality": collection.modality,
            "rows": len(collection),
            "items": [
                {
                    "row": row,
                    "path": collection.item(row).item_id,
                    "media": media_url(collection.name, row),
                }
                for row in rows
            ],
        }

    @app.post("/api/search", summary="Rank the served collections for an uploaded file")
    async def search_upload(
        file: UploadFile = File(description="an image or audio file"),
        method: str = Form(DEFAULT_METHOD, description="|".join(METHOD_NAMES)),
        top: int = Form(10, description=f"hits to return, 1..{MAX_TOP}"),
        explain: int = Form(0, description=f"bank texts per hit, 0..{MAX_EXPLAIN}"),
        collection: list[str] | None = Form(None, description="collections to rank"),
    ) -> JSONResponse:
        request = SearchRequest(method, top, explain, tuple(collection) if collection else None)
        upload = served.submit_upload(file.file, file.filename or "upload", request)
        return JSONResponse(answer_json(await asyncio.wrap_future(upload)))

    @app.post("/api/search/item", summary="Rank with the file of a collection's row as query")
    async def search_item(body: ItemSearch) -> JSONResponse:
        chosen = tuple(body.collections) if body.collections else None
        request = SearchRequest(body.method, body.top, body.explain, chosen)
        answer = await asyncio.wrap_future(served.submit_item(body.collection, body.row, request))
        return JSONResponse(answer_json(answer, collection=body.collection, row=body.row))

    @app.get(
        "/api/media/{name}/{row}",
        summary="A collection row's file (HTTP range requests answered)",
        response_class=FileResponse,
    )
    def media(name: str, row: int) -> Any:
        return media_response(served, name, row)


def _describe(bank: Any) -> dict[str, Any]:
    return {
        "name": bank.name,
        "kind": bank.kind,
        "modality": bank.modality,
        "rows": len(bank),
        "models": bank.manifest.model_keys(),
    }


def _add_errors(app: Any) -> None:
    """Every error as `{"error": message}` with the status its kind calls for."""

    @app.exception_handler(UclError)
    async def ucl_error(_request: Request, error: UclError) -> JSONResponse:
        body: dict[str, Any] = {"error": str(error)}
        if isinstance(error, InputFileError):
            body["reason"] = error.reason
        return JSONResponse(body, status_code=_status(error))

    @app.exception_handler(HTTPException)
    async def http_error(_request: Request, error: HTTPException) -> JSONResponse:
        return JSONResponse(
            {"error": str(error.detail)}, status_code=error.status_code, headers=error.headers
        )

    @app.exception_handler(RequestValidationError)
    async def invalid(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            f"{'.'.join(str(part) for part in problem['loc'][1:]) or 'body'}: {problem['msg']}"
            for problem in error.errors()
        ]
        return JSONResponse({"error": "; ".join(problems)}, status_code=422)


def _status(error: UclError) -> int:
    if isinstance(error, NotServedError):
        return 404
    if isinstance(error, InputFileError):
        return 422
    if isinstance(error, UsageError):
        return 400
    return 500
