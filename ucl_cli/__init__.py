"""ucl: zero-shot retrieval between modalities no model was trained on together.

Two contrastive models that share a bridge modality (CLIP: image<->text, CLAP: text<->audio) are
combined by the Monte Carlo estimate of log p(c|a)/p(c) over a bank of bridge items
(Che & Eysenbach, ICLR 2025, Lemma 1). See `ucl_cli.estimators` for the math.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("ucl-cli")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
