"""The published numbers (the authors' corrected tables; docs/METHOD.md#the-synthetic-evidence)
that a run is compared with.

A published value is a point or a range (the rho sweep reports ranges over critics); a run's
difference from it is the distance to the range, 0 inside it. Cells are keyed by
(family, critic, column), where column is "direct" or "mc_<bank size>"; the exact references by
("reference", name, column) with name "bayes" or "lemma1".
"""

from __future__ import annotations

from dataclasses import dataclass

CRITIC_ORDER = ("cosine", "dot", "neg_sq_l2")


@dataclass(frozen=True)
class Published:
    """A published value: low == high for a point."""

    low: float
    high: float

    def distance(self, value: float) -> float:
        """Signed distance from the range: negative below it, positive above it, 0 inside."""
        if value < self.low:
            return value - self.low
        if value > self.high:
            return value - self.high
        return 0.0

    def __str__(self) -> str:
        if self.low == self.high:
            return f"{self.low:.3g}" if self.low >= 0.995 else f"{self.low:.2f}"
        return f"{self.low:.2f}-{self.high:.2f}"


def _point(value: float) -> Published:
    return Published(value, value)


def _per_critic(values: tuple[float, float, float]) -> dict[str, Published]:
    return {critic: _point(value) for critic, value in zip(CRITIC_ORDER, values, strict=True)}


# Main table (rho = 0, 10 seeds): recall@1, critics cosine / dot / -1/2||x-y||^2.
_MAIN: dict[tuple[str, str], dict[str, Published]] = {
    ("shared", "direct"): _per_critic((0.99, 0.39, 1.00)),
    ("shared", "mc_5000"): _per_critic((0.92, 0.87, 0.87)),
    ("shared", "mc_100000"): _per_critic((0.98, 0.96, 0.97)),
    ("independent", "direct"): _per_critic((0.03, 0.03, 0.04)),
    ("independent", "mc_5000"): _per_critic((0.82, 0.73, 0.70)),
    ("independent", "mc_100000"): _per_critic((0.94, 0.89, 0.88)),
    ("oracle", "direct"): _per_critic((1.00, 0.99, 1.00)),
}
_MAIN_REFERENCES = {
    ("bayes", "direct"): _point(0.999),
    ("lemma1", "mc_5000"): _point(0.79),
    ("lemma1", "mc_100000"): _point(0.955),
}

# Assumption-1 violation (M = 100k, 5 seeds, shared B encoder and the oracle only). Monte Carlo
# is the range over the three critics; Direct is the range over cosine and -1/2||x-y||^2.
_RHO = {
    0.25: {"mc": (0.91, 0.93), "direct": (0.93, 0.96), "oracle": 0.99, "lemma1": 0.91},
    0.5: {"mc": (0.82, 0.85), "direct": (0.83, 0.89), "oracle": 0.99, "lemma1": 0.85},
    0.75: {"mc": (0.59, 0.63), "direct": (0.57, 0.63), "oracle": 1.00, "lemma1": 0.68},
    1.0: {"mc": (0.03, 0.03), "direct": (0.03, 0.03), "oracle": 1.00, "lemma1": 0.03},
}


def published_value(rho: float, family: str, critic: str, column: str) -> Published | None:
    """The published recall for one cell of a run at bypass rho, or None if none was published.

    family is "shared", "independent", "oracle" or "reference"; for "reference", critic is the
    reference's name ("bayes" or "lemma1").
    """
    if rho == 0.0:
        if family == "reference":
            return _MAIN_REFERENCES.get((critic, column))
        return _MAIN.get((family, column), {}).get(critic)
    row = _RHO.get(round(rho, 4))
    if row is None:
        return None
    if family == "reference":
        if critic == "bayes" and column == "direct":
            return _point(0.999)
        return _point(row["lemma1"]) if critic == "lemma1" and column == "mc_100000" else None
    if family == "oracle" and column == "direct":
        return _point(row["oracle"])
    if family != "shared":
        return None
    if column == "mc_100000":
        return Published(*row["mc"])
    if column == "direct" and critic in ("cosine", "neg_sq_l2"):
        return Published(*row["direct"])
    return None
