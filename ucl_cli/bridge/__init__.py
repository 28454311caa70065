"""Layer 6: one query, from files to ranked candidates, and the scoring methods it offers."""

from ucl_cli.bridge.pipeline import (
    METHODS,
    BridgeWeight,
    Hit,
    QueryOptions,
    QueryResult,
    SearchListener,
    SearchReport,
    search,
)

__all__ = [
    "METHODS",
    "BridgeWeight",
    "Hit",
    "QueryOptions",
    "QueryResult",
    "SearchListener",
    "SearchReport",
    "search",
]
