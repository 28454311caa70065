"""ucl: zero-shot retrieval between modalities no model was trained on together.

Two contrastive models that share a bridge modality (CLIP: image<->text, CLAP: text<->audio) are
combined by the Monte Carlo estimate of log p(c|a)/p(c) over a bank of bridge items
(Che & Eysenbach, ICLR 2025, Lemma 1). See `ucl_cli.estimators` for the math,
`ucl_cli.bridge` for one query run (`search`, its methods and options) and `ucl_cli.evaluation`
for measuring retrieval (`evaluate`).
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("ucl-cli")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

# The query API, imported on first use so that `import ucl_cli` (and `ucl --help`) stay light.
_LAZY = {
    "search",
    "QueryOptions",
    "ScoringSettings",
    "Calibration",
    "QueryResult",
    "Hit",
    "SearchReport",
    "Listener",
    "SearchListener",
}

__all__ = ["__version__", *sorted(_LAZY)]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from ucl_cli import bridge

        return getattr(bridge, name)
    raise AttributeError(f"module 'ucl_cli' has no attribute {name!r}")
