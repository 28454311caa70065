"""The three model families of the synthetic experiments, as data.

- shared: one model with encoders A, B, C trained on A-B pairs and on B-C pairs (the B encoder is
  shared, as in ImageBind-style training). Lemma 2/3 say Direct comparison works here.
- independent: an A-B model and a separate B-C model (like CLIP and CLAP); their B encoders
  differ, so Direct comparison of A and C embeddings is meaningless, while the Monte Carlo bridge
  over a bank of B samples is not.
- oracle: a model trained on (A, C) pairs, which the other two never see: the ceiling.

Each pair trains on its own block of rows: block 0 for A-B (and for the oracle's A-C), block 1 for
B-C, so no model ever sees a full (A, B, C) triplet.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PairSpec:
    """A contrastive pair: encoder names on each side and the block of training rows it uses."""

    left: str
    right: str
    block: int


@dataclass(frozen=True)
class FamilySpec:
    """Encoders (name -> modality "a", "b" or "c"), pairs, and the bridge encoders if any.

    bridge: (encoder that embeds the bank for the A side, the same for the C side), or None.
    """

    name: str
    encoders: dict[str, str]
    pairs: tuple[PairSpec, ...]
    bridge: tuple[str, str] | None


SHARED = FamilySpec(
    name="shared",
    encoders={"A": "a", "B": "b", "C": "c"},
    pairs=(PairSpec("A", "B", 0), PairSpec("B", "C", 1)),
    bridge=("B", "B"),
)
INDEPENDENT = FamilySpec(
    name="independent",
    encoders={"A": "a", "B1": "b", "B2": "b", "C": "c"},
    pairs=(PairSpec("A", "B1", 0), PairSpec("B2", "C", 1)),
    bridge=("B1", "B2"),
)
ORACLE = FamilySpec(
    name="oracle",
    encoders={"A": "a", "C": "c"},
    pairs=(PairSpec("A", "C", 0),),
    bridge=None,
)

FAMILIES: tuple[FamilySpec, ...] = (SHARED, INDEPENDENT, ORACLE)
FAMILY_INDEX = {family.name: index for index, family in enumerate(FAMILIES)}
