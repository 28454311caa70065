"""What one `ucl eval` run measures: the paper's protocol by default (100 trials of 25
candidates, recall@1/5/10; docs/METHOD.md#pretrained-models), and how to vary it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ucl_cli.bridge.methods import METHOD_NAMES, METHOD_TABLE, ScoringSettings
from ucl_cli.errors import UsageError
from ucl_cli.modality import Modality

Direction = Literal["image->audio", "audio->image"]
DIRECTIONS: tuple[str, ...] = ("image->audio", "audio->image")
# Spellings a shell leaves alone ('>' unquoted is a redirection).
DIRECTION_ALIASES = {"image-to-audio": "image->audio", "audio-to-image": "audio->image"}
METHODS = METHOD_NAMES  # every method of the table, measured by default


@dataclass(frozen=True)
class EvalOptions:
    """One evaluation's settings.

    bank_sizes: sizes of random sub-banks (nested, seeded) to measure recall against M; the
      whole (leak-free) bank is always measured too.
    ks: the recall cut-offs. confidence: the level of the intervals.
    allow_leak: keep bank items equal to a manifest caption (they are reported either way).
    strict: an unreadable file is an error, instead of leaving its item out.
    block_items: most items scored in one [items, items] matrix (memory: its square in floats).
    scoring: what `ucl query` shares (device, force_direct, topk's nearest rows, the
      calibration); topk certifies the leading max(ks) positions of each trial. A calibration
      other than the paper's applies to the methods that compute the bridge sum (lse, topk)
      only; the others are measured as they are (`calibrated_methods`, and the report says so).
    """

    trials: int = 100
    candidates: int = 25
    seed: int = 0
    methods: tuple[str, ...] = METHODS
    bank_sizes: tuple[int, ...] = ()
    direction: Direction = "image->audio"
    ks: tuple[int, ...] = (1, 5, 10)
    confidence: float = 0.95
    allow_leak: bool = False
    strict: bool = False
    batch_size: int | None = None
    block_items: int = 4096
    scoring: ScoringSettings = field(default_factory=ScoringSettings)

    def __post_init__(self) -> None:
        if self.direction not in DIRECTIONS:
            raise UsageError(
                f"unknown direction {self.direction!r}; choose {' or '.join(DIRECTIONS)}"
            )
        unknown = [method for method in self.methods if method not in METHODS]
        if unknown or not self.methods:
            raise UsageError(
                f"unknown method {', '.join(map(repr, unknown)) or '(none given)'}; choose from: "
                f"{', '.join(METHODS)}"
            )
        if len(set(self.methods)) != len(self.methods):
            raise UsageError(f"a method is named twice in {', '.join(self.methods)}")
        if not self.scoring.calibration.is_paper and not self.calibrated_methods:
            raise UsageError(
                "--temperature and --normalize change the bridge sum over the bank, which "
                f"none of {', '.join(self.methods)} computes; measure lse or topk with them"
            )
        if self.trials < 1:
            raise UsageError(f"trials must be at least 1; got {self.trials}")
        if self.candidates < 2:
            raise UsageError(
                f"candidates must be at least 2 (one positive, one other); got {self.candidates}"
            )
        if not self.ks or min(self.ks) < 1:
            raise UsageError(f"recall cut-offs must be at least 1; got {list(self.ks)}")
        if any(size < 1 for size in self.bank_sizes):
            raise UsageError(f"bank sizes must be at least 1; got {list(self.bank_sizes)}")
        if not 0.0 < self.confidence < 1.0:
            raise UsageError(f"confidence must lie strictly between 0 and 1; got {self.confidence}")
        if self.block_items < self.candidates:
            raise UsageError(
                f"block_items ({self.block_items}) must hold one trial "
                f"({self.candidates} candidates)"
            )

    @property
    def calibrated_methods(self) -> tuple[str, ...]:
        """The requested methods the calibration applies to (those computing the bank sum)."""
        return tuple(name for name in self.methods if METHOD_TABLE[name].calibrates)

    @property
    def query_modality(self) -> Modality:
        return Modality(self.direction.split("->")[0])

    @property
    def candidate_modality(self) -> Modality:
        return Modality(self.direction.split("->")[1])


def parse_direction(text: str) -> Direction:
    """'image->audio' or 'image-to-audio' (and the same for audio->image)."""
    value = DIRECTION_ALIASES.get(text.strip().lower(), text.strip().lower())
    if value not in DIRECTIONS:
        raise UsageError(
            f"unknown direction {text!r}; choose image-to-audio (image->audio) or "
            "audio-to-image (audio->image)"
        )
    return value  # type: ignore[return-value]
