"""How the bridge sum is tempered and normalised (`Calibration`): the settings alone, without
torch, so that `ucl query` and `ucl eval` can check `--temperature` and `--normalize` before any
heavy import. The arithmetic is `ucl_cli.estimators.calibrated`
(docs/METHOD.md#tempered-and-self-normalised-scores).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from ucl_cli.errors import UsageError

NORMALIZATIONS = ("none", "candidates")


@dataclass(frozen=True)
class Calibration:
    """How the bridge sum is tempered and normalised. The default is the paper's estimator."""

    query_temperature: float = 1.0  # t1, on left = s1 f_AB
    candidate_temperature: float = 1.0  # t2, on right = s2 f_BC
    normalize: str = "none"  # "none" or "candidates" (divide by the bank's estimate of 1)

    def __post_init__(self) -> None:
        for name in ("query_temperature", "candidate_temperature"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise UsageError(f"{name} must be a positive number, got {value}")
        if self.normalize not in NORMALIZATIONS:
            raise UsageError(
                f"normalize must be one of {', '.join(NORMALIZATIONS)}, got {self.normalize!r}"
            )

    @classmethod
    def parse(cls, temperature: str = "1", normalize: str = "none") -> Calibration:
        """From the command line: `--temperature T` or `T1,T2`, `--normalize none|candidates`."""
        parts = [part.strip() for part in str(temperature).split(",")]
        try:
            values = [float(part) for part in parts]
        except ValueError:
            raise UsageError(
                f"--temperature takes a number or two separated by a comma, got {temperature!r}"
            ) from None
        if len(values) not in (1, 2):
            raise UsageError(f"--temperature takes one or two numbers, got {temperature!r}")
        t1, t2 = (values[0], values[0]) if len(values) == 1 else values
        if not all(math.isfinite(value) and value > 0 for value in (t1, t2)):
            raise UsageError(f"--temperature must be positive and finite, got {temperature!r}")
        if normalize not in NORMALIZATIONS:
            raise UsageError(
                f"--normalize must be one of {', '.join(NORMALIZATIONS)}, got {normalize!r}"
            )
        return cls(t1, t2, normalize)

    @property
    def is_paper(self) -> bool:
        """True for the paper's estimator (no tempering, no normalisation)."""
        return (self.query_temperature, self.candidate_temperature, self.normalize) == (
            1.0,
            1.0,
            "none",
        )

    def describe(self) -> str:
        """One phrase for a summary: "temperature 0.25, normalised over the candidates' bank
        sums" (the paper's estimator: "the paper's estimator")."""
        if self.is_paper:
            return "the paper's estimator"
        t1, t2 = self.query_temperature, self.candidate_temperature
        temperature = f"temperature {t1:g}" if t1 == t2 else f"temperature {t1:g},{t2:g}"
        if self.normalize == "none":
            return temperature
        return f"{temperature}, self-normalised per candidate"

    def to_json(self) -> dict[str, object]:
        return {
            "temperature": [self.query_temperature, self.candidate_temperature],
            "normalize": self.normalize,
        }


__all__ = ["NORMALIZATIONS", "Calibration"]
