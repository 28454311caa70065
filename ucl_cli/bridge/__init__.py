"""One query, from files to ranked candidates, and the scoring methods it offers.

- `methods`: the method table (names, properties, scoring functions), `ScoringSettings`,
  `Bridge`; torch-free, so the CLI can check `--method` before torch loads.
- `scoring`: each method's arithmetic (torch). `sides`: the bank as each model sees it.
- `pipeline`: `search`, files to ranked hits. `listener`: the progress hooks of a run.

Names are imported on first use, so that `ucl_cli.bridge.methods` stays light.
"""

from __future__ import annotations

from typing import Any

_FROM = {
    "METHODS": ("ucl_cli.bridge.methods", "METHOD_NAMES"),
    "ScoringSettings": ("ucl_cli.bridge.methods", "ScoringSettings"),
    "Calibration": ("ucl_cli.calibration", "Calibration"),
    "Listener": ("ucl_cli.bridge.listener", "Listener"),
    "SearchListener": ("ucl_cli.bridge.listener", "Listener"),  # the public API's older name
    "BridgeWeight": ("ucl_cli.bridge.pipeline", "BridgeWeight"),
    "Hit": ("ucl_cli.bridge.pipeline", "Hit"),
    "QueryOptions": ("ucl_cli.bridge.pipeline", "QueryOptions"),
    "QueryResult": ("ucl_cli.bridge.pipeline", "QueryResult"),
    "SearchReport": ("ucl_cli.bridge.pipeline", "SearchReport"),
    "search": ("ucl_cli.bridge.pipeline", "search"),
}

__all__ = sorted(_FROM)


def __getattr__(name: str) -> Any:
    if name in _FROM:
        from importlib import import_module

        module, attribute = _FROM[name]
        return getattr(import_module(module), attribute)
    raise AttributeError(f"module 'ucl_cli.bridge' has no attribute {name!r}")
