"""`topk` over a bank's shards (`distributed.bridge_topk`) is as sound as over one bank.

Each shard bounds the log-sum over its own rows; the driver, holding no bank row, joins them.
The truth is the bridge score in float64 from the stored float32 vectors. No Ray here: the
shards are opened in this process and `gather` asks each of them in turn, as actors would.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_certificates import (
    check_against_exact,
    flat,
    ivf,
    near_tie_candidates,
    tight_clusters,
    unit,
)

from ucl_cli.bank import ModelRecord, save_bank, text_item
from ucl_cli.bank.nearest import DEFAULT_NPROBE, CertifiedNearest
from ucl_cli.bank.norms import largest_row_norm
from ucl_cli.bank.shards import manifest_digest
from ucl_cli.bridge.methods import Bridge
from ucl_cli.bridge.scoring import topk_scores
from ucl_cli.calibration import Calibration
from ucl_cli.distributed.actor import ShardHost, ShardRef
from ucl_cli.distributed.bridge_request import ShardedSide
from ucl_cli.distributed.bridge_topk import (
    BoundsRequest,
    cluster_topk_scores,
    joined_log_mean,
    shard_depths,
)

DIM_Q, DIM_C = 16, 12


def paired_bank(rng, centres: int, per_centre: int, noise: float = 1e-3, norm: float = 1.0):
    """Rows of both models in tight clusters (cluster m on one side is cluster m on the other),
    shuffled so that every shard holds part of every cluster; rows scaled to `norm`."""
    left, _ = tight_clusters(rng, centres, per_centre, DIM_Q, noise)
    right, _ = tight_clusters(rng, centres, per_centre, DIM_C, noise)
    order = rng.permutation(len(left))
    scale = np.float32(norm)
    return (left[order] * scale).astype(np.float32), (right[order] * scale).astype(np.float32)


class MemoryShard:
    """A shard held in memory, searched by its own index: for rows a bank on disk would not
    hold (it stores rows at unit norm)."""

    def __init__(self, left: np.ndarray, right: np.ndarray, index: str):
        self._vectors = {"q": left, "c": right}
        if len(right):
            searched = flat(right) if index == "Flat" else ivf(right, int(index[3:-5]))
            self._nearest = CertifiedNearest(searched, right, nprobe=DEFAULT_NPROBE)

    def vectors(self, key: str) -> np.ndarray:
        return self._vectors[key]

    def nearest(self, key: str, device: str = "cpu") -> CertifiedNearest:
        assert key == "c" and device == "cpu"
        return self._nearest

    def __len__(self) -> int:
        return len(self._vectors["q"])


class ShardedBank:
    """A bank split into shards of the given sizes and indexes (on disk, each a complete bank,
    and as one bank too; or in memory), with the `gather` a driver would have: every shard's
    answer, by name, asked in this process."""

    def __init__(self, tmp_path, left, right, sizes, indexes, scales, *, on_disk=True):
        self.scales = scales
        models = [ModelRecord("q", DIM_Q, scales[0]), ModelRecord("c", DIM_C, scales[1])]
        items = [text_item(f"text {i}") for i in range(len(left))]
        self.whole = None
        if on_disk:
            self.whole = save_bank(tmp_path / "whole", items, [left, right], models)
        # the truth is about the stored vectors (a bank on disk stores rows at unit norm)
        self.left = np.asarray(self.whole.vectors("q")) if on_disk else left
        self.right = np.asarray(self.whole.vectors("c")) if on_disk else right
        self.shards, self.banks, start = [], {}, 0
        for i, (size, index) in enumerate(zip(sizes, indexes, strict=True)):
            part, name = slice(start, start + size), f"shard{i}"
            if on_disk:
                path = tmp_path / name
                self.banks[name] = save_bank(path, items[part], [left[part], right[part]],
                                             models, faiss_index=index)  # fmt: skip
                digest = manifest_digest(path)
            else:
                path, digest = tmp_path / name, "in memory"
                self.banks[name] = MemoryShard(left[part], right[part], index)
            self.shards.append(ShardRef(name, str(path), digest, size, start))
            start += size
        assert start == len(left)
        self.requests: list[BoundsRequest] = []
        self.actor: ShardHost | None = None

    def gather(self, request: BoundsRequest) -> dict:
        # each round's bounds requests (not the questions for the shards' top values before)
        if not request.tops_only:
            self.requests.append(request)
        # as an actor computes (its banks opened here); `self.actor` None: a new actor each
        # call, which has kept nothing from the last
        host = self.actor or ShardHost(device="cpu")
        return {shard.name: request.on_shard(self.banks[shard.name], shard, host)
                for shard in reversed(self.shards)}  # fmt: skip

    def sides(self) -> tuple[ShardedSide, ShardedSide]:
        return (
            ShardedSide("q", self.scales[0], largest_row_norm(self.left)),
            ShardedSide("c", self.scales[1], largest_row_norm(self.right)),
        )

    def cluster_scores(self, queries, candidates, **options):
        return cluster_topk_scores(
            self.gather, self.shards, *self.sides(), queries, candidates, **options
        )

    def local_scores(self, queries, candidates, rows=None, **options):
        """`topk_scores` in one process over the unsharded bank (or its sub-bank `rows`)."""
        query_model = SimpleNamespace(key="q", logit_scale=self.scales[0])
        candidate_model = SimpleNamespace(key="c", logit_scale=self.scales[1])
        bridge = Bridge.of(self.whole, query_model, candidate_model, rows)
        return topk_scores(bridge, queries, candidates, **options)

    def close(self):
        for bank in [self.whole, *self.banks.values()]:
            if hasattr(bank, "close"):
                bank.close()


def exact_scores(queries, candidates, left, right, scales, calibration=None) -> np.ndarray:
    """The calibrated bridge score in float64 from the stored float32 vectors."""
    calibration = calibration or Calibration()
    s1 = scales[0] * calibration.query_temperature
    s2 = scales[1] * calibration.candidate_temperature
    lhs = torch.from_numpy(s1 * (queries.astype(np.float64) @ left.astype(np.float64).T))
    rhs = torch.from_numpy(s2 * (right.astype(np.float64) @ candidates.astype(np.float64).T))
    log_m = math.log(len(left))
    scores = torch.logsumexp(lhs[:, :, None] + rhs[None], dim=1) - log_m
    if calibration.normalize == "candidates":
        scores = scores - (torch.logsumexp(rhs, dim=0) - log_m)[None, :]
    return scores.numpy()


def queries_and_candidates(rng, left, right, twins: int = 10):
    """Queries at bank rows; candidates at bank rows, near them, and in twins 1e-7 apart."""
    queries = unit(left[rng.integers(len(left), size=3)])
    near = unit(right[rng.integers(len(right), size=20)] + 0.05 * rng.standard_normal((20, DIM_C)))
    at_rows = unit(right[rng.integers(len(right), size=10)])
    ties = near_tie_candidates(rng, DIM_C, twins, 1e-7)
    return queries, np.concatenate([near, at_rows, ties])


SPLITS = {
    "one shard": ([1600], ["Flat"]),
    "uneven": ([150, 1100, 350], ["Flat", "Flat", "Flat"]),
    "an empty shard": ([700, 0, 900], ["Flat", "Flat", "Flat"]),
    "IVF lists and Flat": ([1200, 400], ["IVF16,Flat", "Flat"]),
}


@pytest.fixture(params=list(SPLITS), ids=list(SPLITS))
def split_bank(request, tmp_path):
    sizes, indexes = SPLITS[request.param]
    rng = np.random.default_rng(sum(sizes) + len(sizes))
    left, right = paired_bank(rng, centres=80, per_centre=20)
    bank = ShardedBank(tmp_path, left, right, sizes, indexes, (100.0, 33.0))
    yield bank, rng
    bank.close()


def test_joined_bounds_contain_the_float64_score_and_certify_its_ranks(split_bank):
    bank, rng = split_bank
    queries, candidates = queries_and_candidates(rng, bank.left, bank.right)
    scores = bank.cluster_scores(queries, candidates, top=10, nearest_rows=8)
    exact = exact_scores(queries, candidates, bank.left, bank.right, bank.scales)
    checked, certified = check_against_exact(scores, exact)
    assert checked == exact.size
    assert certified >= 3 * 10  # sound, and useful: the leading ranks are proven


def test_the_shards_certify_the_top_that_the_whole_bank_does(split_bank):
    bank, rng = split_bank
    # candidates near distinct rows, no twins: a top the whole bank certifies in full
    queries = unit(bank.left[rng.integers(len(bank.left), size=3)])
    picked = bank.right[rng.choice(len(bank.right), size=40, replace=False)]
    candidates = unit(picked + 0.05 * rng.standard_normal(picked.shape))
    options = {"top": 10, "nearest_rows": 8}
    cluster = bank.cluster_scores(queries, candidates, **options)
    local = bank.local_scores(queries, candidates, **options)
    assert bool(local.certified[:, :10].all()) and bool(cluster.certified[:, :10].all())
    assert torch.equal(cluster.order[:, :10], local.order[:, :10])
    leading = local.order[:, :10]
    np.testing.assert_allclose(
        cluster.values.gather(1, leading).numpy(), local.values.gather(1, leading).numpy(),
        atol=1e-4,
    )  # fmt: skip


@pytest.fixture
def growing(tmp_path):
    """A bank whose first round leaves the top uncertified: lists of 64 on a shard, 8 visited
    first, and candidates aimed between clusters, which block the top until more lists are
    visited. (bank, queries, candidates)."""
    rng = np.random.default_rng(3)
    left, right = paired_bank(rng, centres=200, per_centre=20, noise=3e-2)
    bank = ShardedBank(tmp_path, left, right, [3200, 800], ["IVF64,Flat", "Flat"], (100.0, 33.0))
    queries, candidates = queries_and_candidates(rng, left, right)
    candidates = np.concatenate([candidates, unit(rng.standard_normal((60, DIM_C)))])
    yield bank, queries, candidates
    bank.close()


def exact_of(bank, queries, candidates) -> np.ndarray:
    return exact_scores(queries, candidates, bank.left, bank.right, bank.scales)


def test_each_round_asks_every_shard_and_grows_the_lists_of_the_blocking_candidates(growing):
    bank, queries, candidates = growing
    scores = bank.cluster_scores(queries, candidates, top=5, nearest_rows=4)
    check_against_exact(scores, exact_of(bank, queries, candidates))
    first, *later = bank.requests
    assert first.nprobe is None and later, "no round after the first"
    assert max(int(r.nprobe.max()) for r in later) > 8  # some candidate visited more lists
    assert all(r.nprobe.min() == 8 for r in later)  # the others stayed at the default


def test_an_actor_keeps_each_shard_search_between_rounds_and_bounds_the_same(growing, monkeypatch):
    import ucl_cli.distributed.bridge_topk as bridge_topk

    bank, queries, candidates = growing
    made = []

    class Counted(bridge_topk.BankBounds):
        def __init__(self, *args, **kwargs):
            made.append(args[0])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(bridge_topk, "BankBounds", Counted)
    fresh = bank.cluster_scores(queries, candidates, top=5, nearest_rows=4)
    rounds = len(bank.requests)
    # every shard, every call (two a round: its top values, then its bounds): made again
    assert rounds > 1 and len(made) == 2 * 2 * rounds
    made.clear()
    bank.actor = ShardHost(device="cpu")
    kept = bank.cluster_scores(queries, candidates, top=5, nearest_rows=4)
    assert len(bank.requests) == 2 * rounds and len(made) == 2  # once per shard
    for field in ("lower", "upper", "order", "certified"):
        assert torch.equal(getattr(kept, field), getattr(fresh, field)), field


def test_the_shards_list_together_about_the_rows_one_pass_lists(growing):
    # Each shard lists as many of its top rows as any query has among its T best of the whole
    # bank, not T each: together about T (more only where queries differ), at least one each.
    assert shard_depths({"a": np.array([[5.0, 4.0, 3.0]]), "b": np.array([[4.5, 1.0, 0.0]])},
                        3) == {"a": 2, "b": 1}  # fmt: skip
    assert shard_depths({"a": np.array([[5.0, 4.0]]), "empty": np.empty((1, 0))}, 8) == {
        "a": 2, "empty": 1,
    }  # fmt: skip
    bank, queries, candidates = growing
    bank.cluster_scores(queries, candidates, top=5, nearest_rows=4)
    for request in bank.requests:
        assert set(request.depths) == {shard.name for shard in bank.shards}
        assert request.t <= sum(request.depths.values()) < 2 * request.t


def test_topk_bounds_a_block_of_queries_at_a_time_with_the_same_result(growing, monkeypatch):
    # In one process as on a shard: a batch whose queries x T x candidates products exceed
    # TOPK_BLOCK_VALUES is bounded in blocks of queries, each query's bounds its own.
    import ucl_cli.bridge.scoring as scoring

    bank, queries, candidates = growing
    whole = bank.local_scores(queries, candidates, top=5, nearest_rows=4)
    monkeypatch.setattr(scoring, "TOPK_BLOCK_VALUES", 1)  # one query per block
    blocked = bank.local_scores(queries, candidates, top=5, nearest_rows=4)
    assert torch.allclose(blocked.lower, whole.lower, rtol=0, atol=1e-6)
    assert torch.allclose(blocked.upper, whole.upper, rtol=0, atol=1e-6)
    assert torch.equal(blocked.certified, whole.certified)
    check_against_exact(blocked, exact_of(bank, queries, candidates))


# --- adversarial inputs ---------------------------------------------------------------------

ADVERSARIAL = {
    "scales 100, 33": ((100.0, 33.0), 1.0, 1.0),
    "huge scales": ((1e3, 1e3), 1.0, 1.0),
    "tiny scales": ((1e-3, 1e-3), 1.0, 1.0),
    "huge and tiny": ((1e3, 1e-3), 1.0, 1.0),
    "rows off unit norm": ((100.0, 33.0), 1.0009, 1.0),
    "large query, small candidate magnitudes": ((100.0, 33.0), 1.0, (30.0, 1e-2)),
}


@pytest.mark.parametrize(("scales", "row_norm", "magnitudes"), ADVERSARIAL.values(),
                         ids=list(ADVERSARIAL))  # fmt: skip
def test_no_wrong_order_is_ever_certified_on_adversarial_banks(
    tmp_path, scales, row_norm, magnitudes
):
    rng = np.random.default_rng(17)
    left, right = paired_bank(rng, centres=60, per_centre=25, noise=1e-4, norm=row_norm)
    sizes, indexes = [900, 0, 600], ["IVF8,Flat", "Flat", "Flat"]
    # in memory: a bank on disk would store its rows at unit norm
    bank = ShardedBank(tmp_path, left, right, sizes, indexes, scales, on_disk=row_norm == 1.0)
    try:
        queries, candidates = queries_and_candidates(rng, left, right, twins=15)
        if magnitudes != 1.0:
            queries = (queries * np.float32(magnitudes[0])).astype(np.float32)
            candidates = (candidates * np.float32(magnitudes[1])).astype(np.float32)
        scores = bank.cluster_scores(queries, candidates, top=len(candidates), nearest_rows=8)
        exact = exact_scores(queries, candidates, left, right, scales)
        checked, _ = check_against_exact(scores, exact)
        assert checked == exact.size
    finally:
        bank.close()


def test_exactly_equal_shard_sums_join_without_losing_the_exact_value():
    # Identical parts: the joined value is log S (+ part) - log M, which float64 rounds.
    parts = np.full((7, 2, 3), 512.123456789)
    parts[:, 1, 2] = -np.inf
    joined, margin = joined_log_mean(parts, 1000)
    exact = 512.123456789 + math.log(7) - math.log(1000)
    assert float(joined[0, 0] - margin[0, 0]) <= exact <= float(joined[0, 0] + margin[0, 0])
    assert float(joined[1, 2]) == -math.inf and math.isfinite(float(margin[1, 2]))


# --- calibration and sub-banks --------------------------------------------------------------


@pytest.mark.parametrize(
    "calibration",
    [Calibration(1.0, 1.0, "candidates"), Calibration(0.5, 2.0, "candidates"),
     Calibration(1.3, 0.7, "none")],
    ids=["normalised", "tempered and normalised", "tempered"],
)  # fmt: skip
def test_calibrated_bounds_contain_the_float64_calibrated_score(tmp_path, calibration):
    rng = np.random.default_rng(5)
    left, right = paired_bank(rng, centres=50, per_centre=24)
    bank = ShardedBank(tmp_path, left, right, [500, 700], ["IVF8,Flat", "Flat"], (100.0, 33.0))
    try:
        queries, candidates = queries_and_candidates(rng, left, right)
        options = {"top": 10, "nearest_rows": 8, "calibration": calibration}
        scores = bank.cluster_scores(queries, candidates, **options)
        exact = exact_scores(queries, candidates, left, right, bank.scales, calibration)
        _, certified = check_against_exact(scores, exact)
        local = bank.local_scores(queries, candidates, **options)
        both = local.certified[:, :10] & scores.certified[:, :10]
        assert certified >= 10 and bool(both.any())
        assert torch.equal(scores.order[:, :10][both], local.order[:, :10][both])
        # the normaliser is asked of the shards once, with the first round
        assert [r.normalizer for r in bank.requests] == [calibration.normalize == "candidates"] + [
            False
        ] * (len(bank.requests) - 1)
    finally:
        bank.close()


@pytest.mark.parametrize("normalize", ["none", "candidates"])
def test_a_sub_bank_across_shards_is_bounded_as_in_one_process(tmp_path, normalize):
    rng = np.random.default_rng(9)
    left, right = paired_bank(rng, centres=40, per_centre=30)
    sizes, indexes = [400, 300, 500], ["IVF8,Flat", "Flat", "Flat"]
    bank = ShardedBank(tmp_path, left, right, sizes, indexes, (100.0, 33.0))
    try:
        # rows of the first and last shard, in no particular order: the middle one has none
        rows = rng.permutation(np.concatenate([np.arange(30, 260), np.arange(800, 1150)]))
        queries, candidates = queries_and_candidates(rng, left, right)
        calibration = Calibration(normalize=normalize)
        options = {"top": 10, "nearest_rows": 8, "calibration": calibration}
        cluster = bank.cluster_scores(queries, candidates, rows=rows, **options)
        local = bank.local_scores(queries, candidates, rows=rows, **options)
        np.testing.assert_allclose(cluster.lower.numpy(), local.lower.numpy(), atol=1e-6)
        np.testing.assert_allclose(cluster.upper.numpy(), local.upper.numpy(), atol=1e-6)
        exact = exact_scores(queries, candidates, left[rows], right[rows], bank.scales, calibration)
        check_against_exact(cluster, exact)
    finally:
        bank.close()
