"""The scoring methods, in one table: what `ucl query`, `ucl eval` and the Python API may run.

A method is registered once, in `METHOD_TABLE`: its name and help line, its scoring function,
whether it scores through the bank (eval measures it at every bank size), whether a pair's score
depends on that pair alone, whether `--explain` can name the bank rows behind a score, and any
precondition on the two models. Everything else (the CLI's choices and help, eval's plan, the
query pipeline's dispatch) reads the table.

This module imports neither torch nor numpy, so that `ucl query --help` and the usage check on
`--method` stay fast; the arithmetic lives in `ucl_cli.bridge.scoring`, imported on first use.

Vocabulary: N queries, M bank rows, K candidates, T nearest bank rows (`topk`). The "query
model" embeds the queries and the bank (e.g. CLIP: image and text); the "candidate model" embeds
the bank and the candidates (e.g. CLAP: text and audio).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from functools import cached_property
from typing import TYPE_CHECKING

from ucl_cli.calibration import Calibration
from ucl_cli.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import torch

    from ucl_cli.bank import Bank
    from ucl_cli.bank.nearest import CertifiedNearest, LazyNearest
    from ucl_cli.distributed.rows import RemoteBridge
    from ucl_cli.encoders.base import Encoder

    # A search over one side's bank that also bounds every row it did not return, overall and
    # per group of rows (see ucl_cli.bank.nearest).
    NearestRows = CertifiedNearest | LazyNearest

# `topk`: nearest bank rows found per candidate through FAISS (T of the candidate side).
NEAREST_ROWS = 64
# `topk`: most nearest bank rows used per query (the query side's T grows up to it).
MAX_NEAREST_ROWS = 8192
# `topk`: the query side's first T (exact, so a large T costs only a gather and a small product).
QUERY_NEAREST_ROWS = 1024


@dataclass(frozen=True)
class ScoringSettings:
    """How every method scores, shared by `QueryOptions` and `EvalOptions` so that a setting
    is declared, defaulted and passed on in one place.

    force_direct: run `direct` even between two separately trained models.
    nearest_rows / max_nearest_rows: `topk`'s T per candidate, and the most T per query.
    calibration: how the bridge sum is tempered and normalised (`Calibration`; the default is
      the paper's estimator). Only the methods that compute the bank sum (`calibrates` in the
      table: lse, topk) use it; `check_calibration` refuses it for the others.
    """

    device: str = "cpu"
    force_direct: bool = False
    nearest_rows: int = NEAREST_ROWS
    max_nearest_rows: int = MAX_NEAREST_ROWS
    calibration: Calibration = field(default_factory=Calibration)

    def __post_init__(self) -> None:
        if not isinstance(self.calibration, Calibration):
            raise UsageError(
                f"calibration must be a Calibration, got {type(self.calibration).__name__}"
            )
        if min(self.nearest_rows, self.max_nearest_rows) < 1:
            raise UsageError(
                f"nearest rows must be at least 1; got {self.nearest_rows} and "
                f"{self.max_nearest_rows}"
            )


@dataclass(frozen=True)
class BridgeSide:
    """One model's view of the bridge: its bank matrix and its trained logit scale."""

    bank: np.ndarray  # [M, d], float32 unit-norm rows (may be a memory map)
    scale: float
    nearest: NearestRows | None = None  # FAISS search over `bank`, for `topk`'s candidate side
    # The largest norm of any bank row (a bank's manifest records it); None: measured on use.
    max_norm: float | None = None

    def scaled(self, factor: float) -> BridgeSide:
        """This side with its logit scale times `factor` (the row norm carried over)."""
        if factor == 1.0:
            return self
        return replace(self, scale=self.scale * factor, max_norm=self.row_norm)

    @cached_property
    def row_norm(self) -> float:
        """What `topk`'s bounds take as the largest row norm: never assumed to be 1."""
        from ucl_cli.bank.norms import largest_row_norm

        return self.max_norm if self.max_norm is not None else largest_row_norm(self.bank)


@dataclass(frozen=True)
class Bridge:
    """The bank as the two models see it: the query model's side (left term of the bridge sum)
    and the candidate model's side (right term). Fixed for a run while the queries and
    candidates scored through it vary (eval scores many blocks through one bridge)."""

    query_side: BridgeSide
    candidate_side: BridgeSide

    def tempered(self, calibration: Calibration) -> Bridge:
        """The same bank with each side's logit scale times its temperature (t1 s1, t2 s2):
        tempering is exactly a change of the two scales, so everything that reads `.scale`
        (the bridge sum, `topk`'s bounds and rounding, the explanation's weights) follows."""
        t1, t2 = calibration.query_temperature, calibration.candidate_temperature
        if t1 == 1.0 and t2 == 1.0:
            return self
        return Bridge(self.query_side.scaled(t1), self.candidate_side.scaled(t2))

    @classmethod
    def of(
        cls,
        bank: Bank,
        query_model: Encoder,
        candidate_model: Encoder,
        rows: np.ndarray | None = None,
        *,
        device: str = "cpu",
    ) -> Bridge:
        """The whole bank (`rows` None) or a sub-bank of its rows, through the two models;
        `topk`'s searches of it run on `device` when FAISS can (`ucl_cli.bank.placement`)."""
        from ucl_cli.bridge.sides import bank_side

        return cls(
            bank_side(bank, query_model, rows, device),
            bank_side(bank, candidate_model, rows, device),
        )


@dataclass(frozen=True)
class Scores:
    """[N, K] scores, and for `topk` which ranking positions the bounds certify."""

    values: torch.Tensor
    order: torch.Tensor  # [N, K] candidate indices, best first
    certified: torch.Tensor | None = None  # [N, K] per position, `topk` only
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None
    bank_rows: torch.Tensor | None = None  # [N] the caption method's chosen bank row


# (bridge, queries [N, d1], candidates [K, d2], settings, top) -> Scores. `top`: the leading
# positions that must be right (results per query; eval's largest recall cut-off).
ScoreFunction = Callable[["Bridge", "np.ndarray", "np.ndarray", ScoringSettings, int], Scores]
# (query model, candidate model, settings) -> why the method cannot rank between these two
# models (None: it can). Raises UsageError where even forcing cannot help.
Precondition = Callable[["Encoder", "Encoder", ScoringSettings], "str | None"]


@dataclass(frozen=True)
class Method:
    """One entry of the table. `pairwise`: a pair's score depends on that pair alone, so eval
    may score many trials in one matrix (`topk` grows T until a trial's leaders are certified,
    so it is scored one trial at a time)."""

    name: str
    summary: str  # one line of `--method` help
    score: ScoreFunction
    through_bank: bool = True  # scores through the bank: eval measures it at every bank size
    pairwise: bool = True
    explains: bool = False  # `--explain` can name the bank rows that carried a score
    precondition: Precondition | None = None
    # computes the bridge sum over the bank, so `--temperature` and `--normalize` apply to it
    calibrates: bool = False
    # its scores carry certified bounds, so a collection may be searched through its index
    # (`bridge.collection_search`) instead of scored row by row
    certifies: bool = False

    def refusal(
        self, query_model: Encoder, candidate_model: Encoder, settings: ScoringSettings
    ) -> str | None:
        """Why this method will not rank between these models (None: it will)."""
        if self.precondition is None:
            return None
        return self.precondition(query_model, candidate_model, settings)

    def forced(
        self, query_model: Encoder, candidate_model: Encoder, settings: ScoringSettings
    ) -> bool:
        """Whether it runs here only because `force_direct` overrides its refusal."""
        if not settings.force_direct:
            return False
        unforced = replace(settings, force_direct=False)
        return self.refusal(query_model, candidate_model, unforced) is not None


def check_direct(
    query_model: Encoder, candidate_model: Encoder, settings: ScoringSettings
) -> str | None:
    """Direct comparison is Bayes-consistent only inside one trained space
    (docs/METHOD.md#when-direct-is-valid)."""
    if query_model.key == candidate_model.key:
        return None
    if not settings.force_direct:
        return (
            f"direct comparison needs one model that embeds both modalities; {query_model.key} "
            f"and {candidate_model.key} were trained separately, so the cosine between their "
            "embeddings is meaningless (Che & Eysenbach, ICLR 2025, Lemma 2); --force-direct "
            "computes it anyway"
        )
    if query_model.dim != candidate_model.dim:
        raise UsageError(
            f"--force-direct: {query_model.key} has dim {query_model.dim} but "
            f"{candidate_model.key} has dim {candidate_model.dim}; there is no cosine to compute"
        )
    return None


def check_calibration(method: Method, settings: ScoringSettings) -> None:
    """A UsageError when a calibration other than the paper's is asked of a method that does
    not compute the bridge sum (`caption` ranks through one bank text, `direct` through none):
    the flags would silently change nothing."""
    if settings.calibration.is_paper or method.calibrates:
        return
    which = ", ".join(m.name for m in METHOD_TABLE.values() if m.calibrates)
    raise UsageError(
        f"--temperature and --normalize change the bridge sum over the bank, which only "
        f"{which} compute; the {method.name} method has none to change: drop the two flags "
        f"or use --method {DEFAULT_METHOD}"
    )


def calibrated_method_names() -> tuple[str, ...]:
    """The methods `--temperature` and `--normalize` apply to, in table order."""
    return tuple(m.name for m in METHOD_TABLE.values() if m.calibrates)


# The scoring functions as the table calls them; each imports the arithmetic (torch) on use,
# and sends the work to the cluster's actors when they hold the bridge's bank (`--cluster`).


def remote_bridge(bridge: Bridge) -> RemoteBridge | None:
    """The bridge as a Ray cluster holds it (`ucl_cli.distributed.rows`, NumPy only), else
    None."""
    from ucl_cli.distributed.rows import remote_bridge as held_by_cluster

    return held_by_cluster(bridge)


def _lse(
    bridge: Bridge,
    queries: np.ndarray,
    candidates: np.ndarray,
    settings: ScoringSettings,
    top: int,
) -> Scores:
    from ucl_cli.bridge.scoring import lse_scores

    remote = remote_bridge(bridge)
    if remote is not None:  # the bank's rows are summed by the actors holding its shards
        return remote.lse(queries, candidates, settings.calibration)
    return lse_scores(
        bridge, queries, candidates, device=settings.device, calibration=settings.calibration
    )


def _topk(
    bridge: Bridge,
    queries: np.ndarray,
    candidates: np.ndarray,
    settings: ScoringSettings,
    top: int,
) -> Scores:
    from ucl_cli.bridge.scoring import topk_scores

    remote = remote_bridge(bridge)
    if remote is not None:  # each round's bounds from the actors holding the bank's shards
        return remote.topk(queries, candidates, settings, top)
    return topk_scores(
        bridge,
        queries,
        candidates,
        top=top,
        nearest_rows=settings.nearest_rows,
        max_nearest_rows=settings.max_nearest_rows,
        device=settings.device,
        calibration=settings.calibration,
    )


def _direct(
    bridge: Bridge,
    queries: np.ndarray,
    candidates: np.ndarray,
    settings: ScoringSettings,
    top: int,
) -> Scores:
    from ucl_cli.bridge.scoring import direct_scores

    return direct_scores(queries, candidates, device=settings.device)


def _caption(
    bridge: Bridge,
    queries: np.ndarray,
    candidates: np.ndarray,
    settings: ScoringSettings,
    top: int,
) -> Scores:
    from ucl_cli.bridge.scoring import caption_scores

    remote = remote_bridge(bridge)
    if remote is not None:  # each shard's best row, found by the actor holding it
        return remote.caption(queries, candidates)
    return caption_scores(bridge, queries, candidates, device=settings.device)


# The one place a method is registered; the first is the default.
METHOD_TABLE: dict[str, Method] = {
    method.name: method
    for method in (
        Method(
            name="lse",
            summary="exact Monte Carlo bridge score (default)",
            score=_lse,
            explains=True,
            calibrates=True,
        ),
        Method(
            name="topk",
            summary="certified bounds on the lse score from the T nearest bank rows, through "
            "the FAISS indexes",
            score=_topk,
            pairwise=False,
            explains=True,
            calibrates=True,
            certifies=True,
        ),
        Method(
            name="direct",
            summary="cosine, only for one shared model",
            score=_direct,
            through_bank=False,
            precondition=check_direct,
        ),
        Method(
            name="caption",
            summary="nearest bank text, then candidates against it",
            score=_caption,
        ),
    )
}
METHOD_NAMES: tuple[str, ...] = tuple(METHOD_TABLE)
DEFAULT_METHOD = METHOD_NAMES[0]


def method_named(name: str) -> Method:
    """The table's entry for `name`, or a UsageError listing the choices."""
    try:
        return METHOD_TABLE[name]
    except KeyError:
        raise UsageError(
            f"unknown method {name!r}; choose one of: {', '.join(METHOD_NAMES)}"
        ) from None


def methods_help() -> str:
    """`--method` help: every method's name and summary, in table order."""
    return "; ".join(f"{m.name}: {m.summary}" for m in METHOD_TABLE.values()) + "."


__all__ = [
    "DEFAULT_METHOD",
    "MAX_NEAREST_ROWS",
    "METHOD_NAMES",
    "METHOD_TABLE",
    "NEAREST_ROWS",
    "QUERY_NEAREST_ROWS",
    "Bridge",
    "BridgeSide",
    "Calibration",
    "Method",
    "Scores",
    "ScoringSettings",
    "calibrated_method_names",
    "check_calibration",
    "check_direct",
    "method_named",
    "methods_help",
]
