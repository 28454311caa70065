"""`topk`'s certificates hold against float64, on the inputs most likely to break them.

The reference is the bridge score computed in float64 from the stored float32 vectors: a bound
that is only "about right" in float32 is not a bound. Adversarial inputs: banks of tight clusters
(near-duplicate captions: rows within 1e-4 of their IVF list's centroid, where
||x||^2 - 2<x, c> + ||c||^2 cancels), candidates aimed at each list's worst row, near ties
between candidates, and rows off unit norm by up to what a bank accepts.
"""

from __future__ import annotations

import math

import faiss
import numpy as np
import pytest
import torch

from ucl_cli.bank.nearest import CertifiedNearest
from ucl_cli.bridge.methods import Bridge, BridgeSide
from ucl_cli.bridge.scoring import topk_scores
from ucl_cli.estimators import BridgeBounds, certify_ranking


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def tight_clusters(rng, centres: int, per_centre: int, dim: int, noise: float = 1e-4):
    """Rows within `noise` of `centres` unit centres: the tightest lists an IVF index can have."""
    middle = unit(rng.standard_normal((centres, dim)))
    rows = np.repeat(middle, per_centre, axis=0)
    return unit(rows + noise * rng.standard_normal(rows.shape)), middle


def ivf(bank: np.ndarray, nlist: int) -> faiss.Index:
    index = faiss.index_factory(bank.shape[1], f"IVF{nlist},Flat", faiss.METRIC_INNER_PRODUCT)
    index.train(bank)
    index.add(bank)
    return index


def flat(bank: np.ndarray) -> faiss.Index:
    index = faiss.IndexFlatIP(bank.shape[1])
    index.add(bank)
    return index


def exact_scores(queries, candidates, left_bank, right_bank, s1, s2) -> np.ndarray:
    """The bridge score in float64 from the stored float32 vectors: what a certificate is about."""
    left = s1 * (queries.astype(np.float64) @ left_bank.astype(np.float64).T)  # [N, M]
    right = s2 * (right_bank.astype(np.float64) @ candidates.astype(np.float64).T)  # [M, K]
    terms = torch.from_numpy(left)[:, :, None] + torch.from_numpy(right)[None]
    return (torch.logsumexp(terms, dim=1) - math.log(left_bank.shape[0])).numpy()


def aimed_at_worst_rows(bank: np.ndarray, index: faiss.Index, count: int) -> np.ndarray:
    """Unit candidates pointing along (x - c) for the rows farthest from their list's centroid:
    there <y, x> = <y, c> + ||x - c|| exactly, so any underestimate of ||x - c|| breaks the
    Cauchy-Schwarz ceiling."""
    quantizer = faiss.extract_index_ivf(index).quantizer
    _, assigned = quantizer.search(bank, 1)
    centroids = quantizer.reconstruct_n(0, quantizer.ntotal)
    residual = bank.astype(np.float64) - centroids[assigned[:, 0]].astype(np.float64)
    worst = np.argsort(-np.linalg.norm(residual, axis=1))[:count]
    return unit(residual[worst])


def check_against_exact(scores, exact: np.ndarray) -> tuple[int, int]:
    """Every bound contains the float64 score and every certified position holds the candidate
    of that exact rank. Returns (bounds checked, positions certified)."""
    lower, upper = scores.lower.double().numpy(), scores.upper.double().numpy()
    bad = np.argwhere((lower > exact) | (exact > upper))
    assert bad.size == 0, (
        f"{len(bad)} bounds miss the float64 score, e.g. query {bad[0][0]} candidate "
        f"{bad[0][1]}: {lower[tuple(bad[0])]!r} <= {exact[tuple(bad[0])]!r} <= "
        f"{upper[tuple(bad[0])]!r}"
    )
    certified = 0
    for n in range(exact.shape[0]):
        order = scores.order[n].numpy()
        for position in np.flatnonzero(scores.certified[n].numpy()):
            candidate = order[position]
            # Its exact rank: how many candidates score strictly higher in float64.
            rank = int((exact[n] > exact[n, candidate]).sum())
            ties = int((exact[n] == exact[n, candidate]).sum())
            assert rank <= position < rank + ties, (
                f"query {n}: candidate {candidate} certified at position {position}, its exact "
                f"rank is {rank}"
            )
            certified += 1
    return lower.size, certified


# --- the IVF per-row ceiling ------------------------------------------------------------------


def test_row_distances_never_underestimate_the_float64_distance():
    rng = np.random.default_rng(0)
    bank, _ = tight_clusters(rng, centres=64, per_centre=60, dim=48)
    index = ivf(bank, 64)
    search = CertifiedNearest(index, bank)
    groups, _ = search.row_groups()
    centroids = faiss.extract_index_ivf(index).quantizer.reconstruct_n(0, 64).astype(np.float64)
    true = np.linalg.norm(bank.astype(np.float64) - centroids[groups], axis=1)
    short = true - search.row_distances()
    assert short.max() <= 0, f"{(short > 0).sum()} rows' distances underestimated by {short.max()}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_per_row_ceilings_bound_candidates_aimed_at_the_worst_rows(seed):
    rng = np.random.default_rng(seed)
    bank, _ = tight_clusters(rng, centres=64, per_centre=60, dim=48)
    index = ivf(bank, 64)
    search = CertifiedNearest(index, bank, nprobe=1)
    candidates = aimed_at_worst_rows(bank, index, 40)
    found = search(candidates, 8)
    groups, _ = search.row_groups()
    exact = candidates.astype(np.float64) @ bank.astype(np.float64).T  # [K, M]
    norms = np.linalg.norm(candidates.astype(np.float64), axis=1)
    row_ceiling = found.centroid_products[:, groups] + norms[:, None] * search.row_distances()
    over = exact - row_ceiling
    assert over.max() <= 0, f"{(over > 0).sum()} rows above their Cauchy-Schwarz ceiling"
    # The per-list ceilings too, for every row the search did not return.
    for k in range(len(candidates)):
        unreturned = np.setdiff1d(np.arange(len(bank)), found.rows[k])
        assert (exact[k, unreturned] <= found.group_ceiling[k, groups[unreturned]]).all()
        assert exact[k, unreturned].max() <= found.ceiling[k]


# --- certify_ranking's margin -----------------------------------------------------------------


def test_bounds_that_touch_certify_no_order():
    # Every row known exactly (lower == upper): two candidates whose bounds are equal, or within
    # rounding of each other, cannot be put in a certified order.
    value = torch.tensor([[2.0, 2.0, 2.0 + 1e-15, 1.0]], dtype=torch.float64)
    ranking = certify_ranking(BridgeBounds(lower=value, upper=value))
    assert ranking.certified[0].tolist() == [False, False, False, True]


def near_tie_candidates(rng, dim: int, pairs: int, spread: float) -> np.ndarray:
    base = unit(rng.standard_normal((pairs, dim)))
    twins = unit(base + spread * rng.standard_normal(base.shape))
    return np.concatenate([base, twins])


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_near_ties_in_a_fully_known_bank_are_never_certified_in_the_wrong_order(seed):
    # An 800-row bank: T covers every row, so lower == upper in the arithmetic used; candidates
    # come in twins whose exact scores differ by ~1e-6 nats (far below float32 rounding).
    rng = np.random.default_rng(seed)
    dim, s1, s2 = 64, 100.0, 33.0
    left_bank = unit(rng.standard_normal((800, dim)))
    right_bank = unit(left_bank + 0.3 * rng.standard_normal((800, dim)))
    queries = unit(left_bank[:2] + 0.1 * rng.standard_normal((2, dim)))
    candidates = near_tie_candidates(rng, dim, pairs=60, spread=3e-8)
    left = BridgeSide(left_bank, s1)
    right = BridgeSide(right_bank, s2, CertifiedNearest(flat(right_bank), right_bank))
    bridge = Bridge(left, right)
    scores = topk_scores(bridge, queries, candidates, top=len(candidates), nearest_rows=1024)
    exact = exact_scores(queries, candidates, left_bank, right_bank, s1, s2)
    check_against_exact(scores, exact)


# --- property: random tight-cluster banks, small (Flat) and IVF-sized -------------------------


def adversarial_case(seed: int, centres: int, per_centre: int, nlist: int | None, aimed: int):
    """Tight clusters on both sides, 3 queries, and candidates aimed at the worst rows (or
    cluster centres), at stored rows and at near ties 1e-7 apart: (left_bank, right_bank,
    Bridge with a certified search of nprobe 1, queries, candidates), scales 100 and 33."""
    rng = np.random.default_rng(seed)
    dim, s1, s2 = 32, 100.0, 33.0
    right_bank, middle = tight_clusters(rng, centres, per_centre, dim)
    left_bank = unit(np.repeat(unit(rng.standard_normal((centres, dim))), per_centre, axis=0))
    left_bank = unit(left_bank + 1e-4 * rng.standard_normal(left_bank.shape))
    index = flat(right_bank) if nlist is None else ivf(right_bank, nlist)
    queries = unit(left_bank[rng.integers(len(left_bank), size=3)])
    if nlist is None:
        centre = middle[rng.integers(centres, size=aimed)]
        towards = unit(centre + 1e-3 * rng.standard_normal((aimed, dim)))
    else:
        towards = aimed_at_worst_rows(right_bank, index, aimed)
    near = unit(right_bank[rng.integers(len(right_bank), size=aimed)])
    candidates = np.concatenate([towards, near, near_tie_candidates(rng, dim, 10, 1e-7)])
    left = BridgeSide(left_bank, s1)
    right = BridgeSide(right_bank, s2, CertifiedNearest(index, right_bank, nprobe=1))
    return left_bank, right_bank, Bridge(left, right), queries, candidates


@pytest.mark.parametrize(
    ("seed", "centres", "per_centre", "nlist"),
    [(0, 40, 20, None), (1, 60, 15, None), (2, 200, 100, 200), (3, 250, 80, 250)],
)
def test_topk_bounds_and_certified_ranks_hold_in_float64(seed, centres, per_centre, nlist):
    left_bank, right_bank, bridge, queries, candidates = adversarial_case(
        seed, centres, per_centre, nlist, aimed=30
    )
    scores = topk_scores(bridge, queries, candidates, top=10, nearest_rows=8)
    exact = exact_scores(queries, candidates, left_bank, right_bank, 100.0, 33.0)
    checked, certified = check_against_exact(scores, exact)
    assert checked == 3 * len(candidates)
    assert certified >= 30  # sound, and still useful: most leading ranks are proven
    print(f"seed {seed}: {checked} bounds contain the float64 score; {certified} ranks certified")


# --- rows off unit norm -----------------------------------------------------------------------


def test_bounds_hold_for_bank_rows_off_unit_norm():
    # A bank written before rows were renormalised may hold norms up to 1 + 1e-3: with s = 100
    # that is 0.1 nats above any "cosine <= 1" cap. The bounds use the rows' largest norm.
    rng = np.random.default_rng(5)
    dim, s1, s2 = 32, 100.0, 33.0
    right_bank, _ = tight_clusters(rng, centres=100, per_centre=40, dim=dim)
    right_bank = (right_bank * np.float32(1.0009)).astype(np.float32)
    left_bank = unit(rng.standard_normal((len(right_bank), dim)))
    index = ivf(right_bank, 100)
    candidates = aimed_at_worst_rows(right_bank, index, 20)
    candidates = np.concatenate([candidates, unit(right_bank[:20])])
    queries = unit(left_bank[:2])
    left = BridgeSide(left_bank, s1)
    right = BridgeSide(right_bank, s2, CertifiedNearest(index, right_bank, nprobe=1))
    scores = topk_scores(Bridge(left, right), queries, candidates, top=5, nearest_rows=4)
    exact = exact_scores(queries, candidates, left_bank, right_bank, s1, s2)
    check_against_exact(scores, exact)
