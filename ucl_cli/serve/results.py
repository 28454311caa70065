"""A search's answer as the API's JSON: the CLI's JSON lines records (`ucl_cli.output`), one per
hit, with the query named as the client named it and, for a collection's row, its row and the
URL its file streams from. Nothing else names a file on the server."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from ucl_cli.output import hit_records
from ucl_cli.serve.state import Answer


def media_url(collection: str, row: int) -> str:
    return f"/api/media/{quote(collection, safe='')}/{row}"


def answer_json(answer: Answer, **query: Any) -> dict[str, Any]:
    """The response body: the query (`name`, `modality`, plus what `query` adds, e.g. the
    collection and row it was taken from), how it was scored, and its ranked hits."""
    [result] = answer.report.results
    hits = []
    for record, hit in zip(hit_records([result]), result.hits, strict=True):
        record["query"] = answer.query_name
        if hit.collection is not None and hit.row is not None:
            record["row"] = hit.row
            record["media"] = media_url(hit.collection, hit.row)
        hits.append(record)
    return {
        "query": {"name": answer.query_name, "modality": result.query_modality.value, **query},
        "candidate_modality": result.candidate_modality.value,
        "method": result.method,
        "bank": result.bank,
        **result.calibration.to_json(),
        "collections": list(answer.collections),
        "candidates": answer.report.candidates,
        "hits": hits,
    }
