"""The arithmetic of each method in `ucl_cli.bridge.methods`, over embeddings already computed.

All embeddings are float32 unit-norm rows, so cosine is a dot product and each critic value is
scale * dot. Vocabulary as in `methods`: N queries, M bank rows, K candidates, T nearest rows.

- `lse`: the exact Monte Carlo bridge score (Lemma 1, docs/METHOD.md#the-estimator), streamed
  over bank chunks (each chunk is a shard; `combine_calibrated` joins them exactly).
- `topk`: certified bounds from the T nearest bank rows of each query (exact, one pass) and of
  each candidate (FAISS), with T grown until the leading results are certified or a limit is
  reached.
- `direct`: cosine between query and candidate, defined only when one model embeds both.
- `caption`: the two-step baseline: the query's nearest bank text, then candidates by that text.

`lse`, `topk` and `explain` take a `Calibration`
(docs/METHOD.md#tempered-and-self-normalised-scores): temperatures t1, t2 are exactly a change
of the two sides' logit scales (t1 s1, t2 s2, `Bridge.tempered`), and normalisation subtracts
each candidate's own bank sum logsumexp_m(t2 s2 <x_m, y_k>) - log M. The default is the
paper's estimator, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import torch

from ucl_cli.bank.norms import largest_row_norm
from ucl_cli.bridge.methods import (
    MAX_NEAREST_ROWS,
    NEAREST_ROWS,
    QUERY_NEAREST_ROWS,
    Bridge,
    BridgeSide,
    Scores,
)
from ucl_cli.calibration import Calibration
from ucl_cli.errors import UsageError
from ucl_cli.estimators import (
    BridgeBounds,
    certify_ranking,
    explain_pairs,
    topk_bridge_bounds,
)
from ucl_cli.estimators.bridge import _full_precision_matmul
from ucl_cli.estimators.calibrated import (
    CalibratedPartial,
    combine_calibrated,
    partial_calibrated_scores,
)
from ucl_cli.estimators.explain import Explanation
from ucl_cli.estimators.topk import (
    GroupedRest,
    TopEntries,
    dot_rounding_bound,
    rest_logmass,
    top_entries,
)

if TYPE_CHECKING:  # FAISS is imported only by the methods that search
    from ucl_cli.bank.nearest import Neighbours

# Bank rows scored per step: bounds memory at (N + K) * BANK_CHUNK floats whatever M is.
BANK_CHUNK = 1 << 16
# `topk`: the most queries x T x candidates products bounded at once (each a float32, with
# float64 copies in the bounds): ~128 MB of them, whatever the batch.
TOPK_BLOCK_VALUES = 1 << 25


def lse_scores(
    bridge: Bridge,
    queries: np.ndarray,
    candidates: np.ndarray,
    *,
    device: str = "cpu",
    chunk: int = BANK_CHUNK,
    calibration: Calibration | None = None,
) -> Scores:
    """Exact bridge scores, one bank chunk (shard) at a time; with a `calibration`, tempered
    and (normalize="candidates") less each candidate's own bank sum, from the same chunks.
    The default calibration gives the paper's estimator, bit for bit."""
    calibration = calibration or Calibration()
    # Temperatures ride on the logit scales (`Bridge.tempered`), as in topk and explain: the
    # products are scaled once, with no second pass over each chunk to temper it.
    tempered = bridge.tempered(calibration)
    parts = lse_parts(tempered, queries, candidates, calibration.normalize, device, chunk)
    values = combine_calibrated(parts)
    return Scores(values, _order(values))


def lse_parts(
    bridge: Bridge,
    queries: np.ndarray,
    candidates: np.ndarray,
    normalize: str = "none",
    device: str = "cpu",
    chunk: int = BANK_CHUNK,
) -> list[CalibratedPartial]:
    """The bridge sums of each bank chunk (of an already tempered bridge), for
    `combine_calibrated` to join: here for the whole bank, on a Ray actor for its shards."""
    normalize_only = Calibration(normalize=normalize)
    q = _tensor(queries, device)
    c = _tensor(candidates, device)
    query_side, candidate_side = bridge.query_side, bridge.candidate_side
    parts = []
    for (_, query_rows), (_, candidate_rows) in zip(
        _bank_chunks(query_side, device, chunk),
        _bank_chunks(candidate_side, device, chunk),
        strict=True,
    ):
        left = query_side.scale * (q @ query_rows.T)
        right = candidate_side.scale * (candidate_rows @ c.T)
        parts.append(partial_calibrated_scores(left, right, normalize_only))
    return parts


def topk_scores(
    bridge: Bridge,
    queries: np.ndarray,
    candidates: np.ndarray,
    *,
    top: int,
    nearest_rows: int = NEAREST_ROWS,
    max_nearest_rows: int = MAX_NEAREST_ROWS,
    device: str = "cpu",
    calibration: Calibration | None = None,
) -> Scores:
    """Certified top-T bounds: T = `nearest_rows` nearest bank rows per candidate, and per query
    T from `QUERY_NEAREST_ROWS` up, grown round by round (`topk_rounds`) until the first `top`
    positions are certified or growing no longer helps.

    The query side is computed exactly, in one pass over the bank (N queries are few; this is
    the cheap side of the bridge): its top T rows, and the exact mass of its row outside them
    in each IVF list, which bounds the unknown part of the sum (`GroupedRest`). The candidate
    side, thousands of candidates, goes through the FAISS index: each candidate's T nearest bank
    rows and certified ceilings on every other row, per list.

    With a `calibration`, the bounds are on the calibrated score. Temperatures are a change of
    the two logit scales (`Bridge.tempered`: t1 s1 and t2 s2 everywhere, in `PathLimits`, the
    rounding and the ceilings), so the certificates hold as they are. Normalisation subtracts
    each candidate's normaliser, computed exactly by `candidate_normalizers`: one streamed pass
    over the candidate side's bank, which costs like `lse`'s candidate side (M x K products;
    a library could store it per candidate, which is future work). The bounds are widened by
    that pass's rounding (`PathLimits.right_error`), so a certificate stays a proof about the
    exact calibrated score of the stored vectors.
    """
    if bridge.candidate_side.nearest is None:
        raise UsageError("the topk method needs a nearest-neighbour index on the candidate side")
    calibration = calibration or Calibration()
    tempered = bridge.tempered(calibration)
    with _full_precision_matmul():  # the rounding bounds assume true float32 products
        source = BankBounds(tempered, queries, candidates, nearest_rows, device)
        return topk_rounds(
            source,
            top=top,
            nearest_rows=nearest_rows,
            max_nearest_rows=max_nearest_rows,
            normalize=calibration.normalize == "candidates",
        )


def candidate_normalizers(
    side: BridgeSide, candidates: np.ndarray, device: str = "cpu", chunk: int = BANK_CHUNK
) -> torch.Tensor:
    """[K] float64: logsumexp_m(scale <x_m, y_k>) - log M over every bank row of `side`, one
    chunk at a time (float32 products, as `PathLimits` bounds them, summed in float64). Each
    value is within `PathLimits.right_error` of the exact one (a logsumexp moves by no more
    than the largest change of its terms)."""
    if len(side.bank) == 0:
        raise UsageError("the bank is empty: no normaliser to compute")
    return candidate_bank_sums(side, candidates, device, chunk) - math.log(len(side.bank))


def candidate_bank_sums(
    side: BridgeSide, candidates: np.ndarray, device: str = "cpu", chunk: int = BANK_CHUNK
) -> torch.Tensor:
    """[K] float64: logsumexp_m(scale <x_m, y_k>) over every row of `side` (-inf for none):
    a normaliser before the mean, so that the sums of a bank's parts add up (logaddexp)."""
    c = _tensor(candidates, device)
    total = torch.full((c.shape[0],), -torch.inf, dtype=torch.float64, device=device)
    for _, rows in _bank_chunks(side, device, chunk):
        values = side.scale * (rows @ c.T)  # [chunk, K], float32 as every other path value
        total = torch.logaddexp(total, torch.logsumexp(values.double(), dim=0))
    return total


class BoundsSource(Protocol):
    """What `topk_rounds` asks each round: bounds for the queries' T and the candidates' visited
    lists. The bank in this process (`BankBounds`) or its shards on a cluster
    (`ucl_cli.distributed.bridge_topk`) answer; the rounds decide what to grow. `lists`,
    `default_nprobe` and `normalizer` are asked after the first `bounds` (a cluster learns
    them from its shards' first answers)."""

    @property
    def bank_size(self) -> int:
        """M: the rows the score averages over."""
        ...

    def bounds(self, t: int, nprobe: np.ndarray | None) -> BridgeBounds:
        """[N, K] bounds on log(1/M sum_m exp(left + right)) (not normalised) from each query's
        T nearest rows and each candidate's search visiting nprobe[k] lists (None: each
        index's default)."""
        ...

    def lists(self) -> int:
        """The most IVF lists a search can visit (1 for Flat: it visits every row)."""
        ...

    def default_nprobe(self) -> int:
        """The lists a first search visits (what nprobe None meant)."""
        ...

    def normalizer(self) -> tuple[torch.Tensor, float]:
        """([K] float64 normalisers, how far each may be from the exact one)."""
        ...


def topk_rounds(
    source: BoundsSource,
    *,
    top: int,
    nearest_rows: int,
    max_nearest_rows: int,
    normalize: bool = False,
) -> Scores:
    """Bounds certified round by round until the first `top` positions are. Two things grow,
    each where it helps: the queries' T 4x (cheap: exact, so it starts at
    `QUERY_NEAREST_ROWS`, up to `max_nearest_rows`), and 4x the lists visited for just the
    candidates whose bounds block those positions. Stops when a round no longer helps (no more
    positions certified and the widest leading bound not even halved) or nothing is left to
    grow. With `normalize`, every round's bounds less the source's normaliser (computed once),
    widened by its error."""
    bank_size = source.bank_size
    t = min(max(nearest_rows, QUERY_NEAREST_ROWS), max_nearest_rows, bank_size)
    nprobe: np.ndarray | None = None  # the first round searches at each index's default
    normalizer: tuple[torch.Tensor, float] | None = None
    previous: tuple[int, float] | None = None
    while True:
        bounds = source.bounds(t, nprobe)
        if normalize:
            if normalizer is None:
                normalizer = source.normalizer()
            bounds = _normalised(bounds, *normalizer)
        scores = _ranked(bounds)
        candidates = scores.lower.shape[1]
        needed = min(top, candidates)
        if nprobe is None:
            nprobe = np.full(candidates, source.default_nprobe())
        leading = int(scores.certified.int().cumprod(dim=1).sum(dim=1).min())
        width = _leading_width(scores, needed)
        if leading >= needed:
            return scores
        if previous is not None and leading <= previous[0] and width > 0.5 * previous[1]:
            return scores  # growing no longer tightens the bounds
        lists = source.lists()
        blocking = _blocking(scores, needed) & (nprobe < lists)
        if t >= min(max_nearest_rows, bank_size) and not blocking.any():
            return scores
        previous = (leading, width)
        t = min(t * 4, max_nearest_rows, bank_size)
        nprobe = np.where(blocking, np.minimum(nprobe * 4, lists), nprobe)


class BankBounds:
    """`topk`'s bounds over a bank held in this process (`BoundsSource`): the query side exact,
    computed once; the candidates searched once and searched again only where a round asks
    them to visit more lists. `row_norm`s of the bridge's sides may be a larger bank's (a
    shard scored for the whole), so that every part shares one `PathLimits`."""

    def __init__(
        self,
        bridge: Bridge,
        queries: np.ndarray,
        candidates: np.ndarray,
        nearest_rows: int,
        device: str = "cpu",
    ) -> None:
        self._side = bridge.candidate_side
        self._candidates = candidates
        self._device = device
        self.limits = PathLimits.of(bridge, queries, candidates)
        self._left = _full_left(_tensor(queries, device), bridge.query_side, device)  # [N, M]
        self._nearest_rows = min(nearest_rows, self.bank_size)
        self._found: Neighbours | None = None
        self._searched: np.ndarray | None = None  # [K] lists each candidate's search visited

    @property
    def bank_size(self) -> int:
        return self._left.shape[1]

    def bounds(self, t: int, nprobe: np.ndarray | None) -> BridgeBounds:
        self._search(nprobe)
        assert self._found is not None
        return _bounds(
            self._left, self._candidates, self._found, self._side, t, self.limits, self._device
        )

    def left_tops(self, t: int) -> torch.Tensor:
        """Each query's `t` largest query-side values [N, min(t, M)] (descending): what the
        shards of a bank compare to share out the T rows one pass would list."""
        return top_entries(self._left, t).values

    def lists(self) -> int:
        return self._side.nearest.lists()

    def default_nprobe(self) -> int:
        return self._side.nearest.default_nprobe()

    def normalizer(self) -> tuple[torch.Tensor, float]:
        values = candidate_normalizers(self._side, self._candidates, self._device)
        return values, self.limits.right_error

    def _search(self, nprobe: np.ndarray | None) -> None:
        """Search every candidate at the default first; then again, one search per count of
        lists, just those asked to visit other than they did."""
        nearest = self._side.nearest
        if self._found is None:
            self._found = nearest(self._candidates, self._nearest_rows)
            self._searched = np.full(len(self._candidates), nearest.default_nprobe())
        if nprobe is None:
            return
        changed = nprobe != self._searched
        for value in np.unique(nprobe[changed]):
            which = np.flatnonzero(changed & (nprobe == value))
            wider = nearest(self._candidates[which], self._nearest_rows, int(value))
            self._found = self._found.with_rows(which, wider)
        self._searched = np.array(nprobe)


def _ranked(bounds: BridgeBounds) -> Scores:
    ranking = certify_ranking(bounds)
    return Scores(
        bounds.estimate,
        ranking.order,
        certified=ranking.certified,
        lower=bounds.lower,
        upper=bounds.upper,
    )


def _blocking(scores: Scores, needed: int) -> np.ndarray:
    """[K] candidates whose bounds keep the first `needed` positions of some query uncertain:
    those among them not certified, and those below whose upper bound reaches the lowest lower
    bound among them."""
    order = scores.order[:, :needed]
    lower_top = scores.lower.gather(1, order)
    threshold = lower_top.min(dim=1, keepdim=True).values  # [N, 1]
    intruding = scores.upper >= threshold  # [N, K], includes the leading ones themselves
    uncertain_top = torch.zeros_like(intruding)
    uncertain_top.scatter_(1, order, ~scores.certified[:, :needed])
    leading = torch.zeros_like(intruding)
    leading.scatter_(1, order, True)
    blocking = (intruding & ~leading) | uncertain_top
    return blocking.any(dim=0).cpu().numpy()


def _leading_width(scores: Scores, needed: int) -> float:
    """The widest bound among the first `needed` positions of any query (nats)."""
    width = (scores.upper - scores.lower).gather(1, scores.order[:, :needed])
    return float(width.max()) if width.numel() else 0.0


@dataclass(frozen=True)
class PathLimits:
    """What the products' magnitudes and rounding allow `topk`'s bounds to assume.

    By Cauchy-Schwarz no critic value is below -scale ||q|| ||x||, with the largest norms of the
    queries (candidates) and of the bank rows (`BridgeSide.row_norm`: rows are never assumed
    unit). Every value is a float32 product scaled in float32, so it is within
    scale gamma_{D+2} ||q|| ||x|| of the exact one (`dot_rounding_bound`); `value_error` is
    that for the two sides together, by which the bounds are widened; `right_error` is the
    candidate side's share alone (what a candidate's normaliser may be off by).
    """

    left_floor: float
    right_floor: float
    value_error: float
    right_error: float = 0.0

    @classmethod
    def of(cls, bridge: Bridge, queries: np.ndarray, candidates: np.ndarray) -> PathLimits:
        query_side, candidate_side = bridge.query_side, bridge.candidate_side
        return cls.between(
            queries,
            candidates,
            scales=(query_side.scale, candidate_side.scale),
            row_norms=(query_side.row_norm, candidate_side.row_norm),
        )

    @classmethod
    def between(
        cls,
        queries: np.ndarray,
        candidates: np.ndarray,
        *,
        scales: tuple[float, float],
        row_norms: tuple[float, float],
    ) -> PathLimits:
        """From the two sides' scales and largest bank row norms alone: what a driver that
        holds no bank rows knows."""
        left = scales[0] * _largest_norm(queries) * row_norms[0]
        right = scales[1] * _largest_norm(candidates) * row_norms[1]
        left_error = left * dot_rounding_bound(queries.shape[1] + 2)
        right_error = right * dot_rounding_bound(candidates.shape[1] + 2)
        return cls(
            left_floor=-left,
            right_floor=-right,
            value_error=left_error + right_error,
            right_error=right_error,
        )


def _largest_norm(vectors: np.ndarray) -> float:
    return largest_row_norm(np.asarray(vectors)) if len(vectors) else 0.0


def _bounds(
    left: torch.Tensor,
    candidates: np.ndarray,
    found: Neighbours,
    candidate_side: BridgeSide,
    t: int,
    limits: PathLimits,
    device: str,
) -> BridgeBounds:
    """Bounds on the (unnormalised) score from the queries' exact row `left` [N, M] and the
    candidates' search `found`, a block of queries at a time: each query's bounds are its own,
    and a block holds at most `TOPK_BLOCK_VALUES` of the queries x T x candidates products
    (100 queries x 8,192 rows x 1,000 candidates would be 3.3 GB at once, more in float64)."""
    scale = candidate_side.scale
    right_top = _scaled_top(found.values, found.rows, found.ceiling, scale, device)
    c = _tensor(candidates, device)
    step = max(1, TOPK_BLOCK_VALUES // max(1, min(t, left.shape[1]) * len(candidates)))
    shared = (candidates, c, found, right_top, candidate_side, t, limits, device)
    blocks = [_block_bounds(left[n0 : n0 + step], *shared) for n0 in range(0, left.shape[0], step)]
    if len(blocks) == 1:
        return blocks[0]
    return BridgeBounds(
        lower=torch.cat([block.lower for block in blocks]),
        upper=torch.cat([block.upper for block in blocks]),
    )


def _block_bounds(
    left: torch.Tensor,
    candidates: np.ndarray,
    c: torch.Tensor,
    found: Neighbours,
    right_top: TopEntries,
    candidate_side: BridgeSide,
    t: int,
    limits: PathLimits,
    device: str,
) -> BridgeBounds:
    """`_bounds` for one block of queries (`left` [n, M])."""
    left_top = top_entries(left, t)  # the T-th value bounds every other row
    scale = candidate_side.scale
    # right[I_n[t], k]: the n*T bank rows of the queries' top lists against every candidate.
    listed = left_top.indices.reshape(-1).cpu().numpy()
    query_bank_rows = _tensor(candidate_side.bank[listed], device)
    right_at_left_top = scale * (query_bank_rows @ c.T).reshape(*left_top.indices.shape, -1)
    left_at_right_top = left[:, right_top.indices]  # [n, K, T]
    rest = _grouped_rest(left, left_top.indices, found, candidate_side, candidates, device)
    return topk_bridge_bounds(
        left_top,
        right_top,
        right_at_left_top,
        left_at_right_top,
        bank_size=left.shape[1],
        left_floor=limits.left_floor,
        right_floor=limits.right_floor,
        rest=rest,
        value_error=limits.value_error,
    )


def _normalised(bounds: BridgeBounds, normalizer: torch.Tensor, error: float) -> BridgeBounds:
    """Bounds on the bridge sum less each candidate's normaliser [K] (computed within `error`
    of the exact one): both bounds shifted by it and widened by `error`."""
    shift = normalizer.to(bounds.lower.device, torch.float64)[None, :]
    return BridgeBounds(lower=bounds.lower - shift - error, upper=bounds.upper - shift + error)


def _grouped_rest(
    left: torch.Tensor,
    listed: torch.Tensor,
    found: Neighbours,
    candidate_side: BridgeSide,
    candidates: np.ndarray,
    device: str,
) -> GroupedRest:
    """The unknown bank rows, by IVF list of the candidate side's index, bounded two ways: each
    query's exact mass in the list times the candidate's ceiling there, and (IVF only) the
    query's mass with each row's distance to its centroid folded in times s2 <y_k, c_g>."""
    scale = candidate_side.scale
    groups, num_groups = candidate_side.nearest.row_groups()
    groups = torch.as_tensor(groups, device=device)
    ways = [
        (
            rest_logmass(left, listed, groups, num_groups),
            torch.as_tensor(found.group_ceiling * scale, device=device),
        )
    ]
    distances = candidate_side.nearest.row_distances()
    if found.centroid_products is not None and distances is not None:
        # <y, x_m> <= <y, c_g> + ||y|| d_m; ||y|| <= the largest candidate norm (1 for unit rows).
        allowance = scale * float(np.linalg.norm(candidates, axis=1).max()) * distances
        allowance = torch.as_tensor(allowance, dtype=torch.float64, device=device)
        spread_mass = rest_logmass(left, listed, groups, num_groups, allowance)
        centre = torch.as_tensor(found.centroid_products * scale, device=device)
        ways.append((spread_mass, centre))
    return GroupedRest(tuple(ways))


def _full_left(q: torch.Tensor, side: BridgeSide, device: str) -> torch.Tensor:
    """scale * <q, bank row> for every bank row, [N, M], one chunk of the (memory-mapped) bank
    at a time: on CPU straight from the map (NumPy reads a read-only map without a copy), on a
    GPU copied over chunk by chunk instead of the whole matrix."""
    bank = side.bank
    if q.device.type == "cpu" and isinstance(bank, np.ndarray) and bank.dtype == np.float32:
        queries = q.numpy()
        out = np.empty((q.shape[0], len(bank)), dtype=np.float32)
        for m0 in range(0, len(bank), BANK_CHUNK):
            chunk = bank[m0 : m0 + BANK_CHUNK]
            out[:, m0 : m0 + len(chunk)] = queries @ chunk.T
        return side.scale * torch.from_numpy(out)
    parts = [q @ rows.T for _, rows in _bank_chunks(side, device)]
    return side.scale * torch.cat(parts, dim=1)


def _bank_chunks(
    side: BridgeSide, device: str, chunk: int = BANK_CHUNK
) -> Iterator[tuple[int, torch.Tensor]]:
    """(first row, rows) of the (memory-mapped) bank, `chunk` rows at a time, as float32 tensors
    on `device`: memory stays bounded by one chunk whatever the bank's size."""
    for m0 in range(0, len(side.bank), chunk):
        yield m0, _tensor(side.bank[m0 : m0 + chunk], device)


def _scaled_top(
    values: np.ndarray, rows: np.ndarray, ceiling: np.ndarray, scale: float, device: str
) -> TopEntries:
    return TopEntries(
        _tensor(values, device) * scale,
        torch.as_tensor(rows, device=device),
        torch.as_tensor(ceiling * scale, dtype=torch.float64, device=device),  # not rounded down
    )


def direct_scores(queries: np.ndarray, candidates: np.ndarray, *, device: str = "cpu") -> Scores:
    """Cosine between query and candidate embeddings of ONE shared space."""
    values = _tensor(queries, device) @ _tensor(candidates, device).T
    return Scores(values, _order(values))


def caption_scores(
    bridge: Bridge,
    queries: np.ndarray,
    candidates: np.ndarray,
    *,
    device: str = "cpu",
    chunk: int = BANK_CHUNK,
) -> Scores:
    """Pick each query's best bank row, then rank candidates against that row (scaled)."""
    _, best_row = caption_rows(bridge.query_side, queries, device=device, chunk=chunk)
    candidate_side = bridge.candidate_side
    captions = _tensor(candidate_side.bank[best_row.cpu().numpy()], device)
    values = candidate_side.scale * (captions @ _tensor(candidates, device).T)
    return Scores(values, _order(values), bank_rows=best_row)


def caption_rows(
    side: BridgeSide, queries: np.ndarray, *, device: str = "cpu", chunk: int = BANK_CHUNK
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each query's best bank row: ([N] its unscaled product, [N] the row), the first row on
    a tie (a bank split in parts picks the same row by taking the first part's on a tie)."""
    q = _tensor(queries, device)
    best_value = torch.full((q.shape[0],), -torch.inf, device=device)
    best_row = torch.zeros(q.shape[0], dtype=torch.long, device=device)
    for m0, rows in _bank_chunks(side, device, chunk):
        value, row = (q @ rows.T).max(dim=1)
        better = value > best_value
        best_value = torch.where(better, value, best_value)
        best_row = torch.where(better, row + m0, best_row)
    return best_value, best_row


def explain(
    bridge: Bridge,
    queries: np.ndarray,
    candidates: np.ndarray,
    pairs: list[tuple[int, int]],
    top: int,
    *,
    device: str = "cpu",
    calibration: Calibration | None = None,
) -> Explanation:
    """Bridge weights and ESS for (query, candidate) pairs; only the pairs' columns are built.
    With a `calibration`, the weights are the ones its score uses: softmax over m of
    t1 left + t2 right (normalisation, a per-candidate constant, changes no weight)."""
    bridge = bridge.tempered(calibration or Calibration())
    rows = torch.tensor([p[0] for p in pairs], dtype=torch.long, device=device)
    cols = torch.tensor([p[1] for p in pairs], dtype=torch.long, device=device)
    wanted = sorted({p[1] for p in pairs})
    column_of = {k: i for i, k in enumerate(wanted)}
    left = _full_left(_tensor(queries, device), bridge.query_side, device)  # [N, M]
    candidate_rows = _tensor(candidates[wanted], device)
    right = _full_left(candidate_rows, bridge.candidate_side, device).T  # [M, K']
    local_cols = torch.tensor([column_of[int(k)] for k in cols], dtype=torch.long, device=device)
    return explain_pairs(left, right, rows, local_cols, top=top)


def _order(values: torch.Tensor) -> torch.Tensor:
    return values.argsort(dim=1, descending=True, stable=True)


def _tensor(array: np.ndarray, device: str) -> torch.Tensor:
    """A float32 tensor on `device`; bank matrices are read-only memory maps, so copy those."""
    array = np.asarray(array, dtype=np.float32)
    if not array.flags.writeable or not array.flags.c_contiguous:
        array = np.array(array, dtype=np.float32, order="C")
    return torch.from_numpy(array).to(device)


__all__ = [
    "BANK_CHUNK",
    "BankBounds",
    "BoundsSource",
    "PathLimits",
    "candidate_bank_sums",
    "candidate_normalizers",
    "caption_rows",
    "caption_scores",
    "direct_scores",
    "explain",
    "lse_parts",
    "lse_scores",
    "topk_rounds",
    "topk_scores",
]
