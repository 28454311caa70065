"""What the actors compute for a bank the cluster holds, checked without Ray.

The specification: a bank held by a cluster is a handle on the driver (`RemoteRows`): every
method asks the shards for its part (lse's partial sums, caption's best row, `--explain`'s
heaviest rows and mass), and the driver's combination equals one pass over the same rows in
one process, for the whole bank and for any sub-bank (eval's smaller banks), without ever
reading a row itself. Here the shards' requests are answered by a `ShardHost` in this process,
exactly as an actor answers them (tests/test_ray_query.py runs the same on Ray).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_sharded_bank import MODELS, unit_rows

from ucl_cli.bank import save_bank, text_item
from ucl_cli.bank.shards import save_sharded_bank
from ucl_cli.bridge.methods import Bridge, BridgeSide, ScoringSettings, method_named
from ucl_cli.bridge.scoring import explain
from ucl_cli.calibration import Calibration
from ucl_cli.distributed.actor import ShardHost
from ucl_cli.distributed.driver import shard_refs
from ucl_cli.distributed.rows import ClusterBank, RemoteRows
from ucl_cli.estimators.explain import NO_ROW, explain_pairs, join_explanations

SCALES = (20.0, 15.0)


class InProcessScorer:
    """`ClusterScorer`'s contract without Ray: each shard's answer from a `ShardHost` here."""

    def __init__(self, bank):
        self.shards = shard_refs(bank)
        self.host = ShardHost()
        self.asked: list[str] = []

    def gather(self, request):
        self.asked.append(request.what)
        return self.host.run(self.shards, request)

    def close(self):
        pass


@pytest.fixture
def banks(tmp_path, monkeypatch):
    """1,000 random rows as one bank and as 4 shards held by a stand-in cluster; reading a
    held row in this process fails the test."""
    rng = np.random.default_rng(5)
    items = [text_item(f"text {i}") for i in range(1000)]
    vectors = [unit_rows(rng, 1000, 16), unit_rows(rng, 1000, 12)]
    vectors[0][700] = vectors[0][50]  # two equal rows in two shards: a tie for caption
    plain = save_bank(tmp_path / "plain", items, vectors, MODELS)
    sharded = save_sharded_bank(tmp_path / "sharded", items, vectors, MODELS, shard_size=300)
    held = ClusterBank(sharded, InProcessScorer(sharded))

    def refuse(self):
        raise AssertionError("the driver read a bank row the cluster holds")

    monkeypatch.setattr(RemoteRows, "local", refuse)
    queries = unit_rows(rng, 5, 16)
    queries[0] = vectors[0][50]  # its best row is 50 and, equally, 700
    yield plain, held, queries, unit_rows(rng, 40, 12)
    plain.close()
    sharded.close()


def bridge_of(bank, rows=None):
    sides = []
    for key, scale in zip(("q", "c"), SCALES, strict=True):
        matrix = bank.vectors(key)
        if rows is not None:
            matrix = matrix.subset(rows) if isinstance(matrix, RemoteRows) else matrix[rows]
        sides.append(BridgeSide(matrix, scale, max_norm=bank.row_norm(key)))  # as bank_side
    return Bridge(*sides)


SUB_BANKS = {
    "whole": None,
    "across shards, unsorted": np.array([950, 3, 610, 299, 300, 42, 901, 599]),
    "two shards of four": np.arange(0, 1000, 7)[(np.arange(0, 1000, 7) // 300) % 2 == 0],
}


@pytest.mark.parametrize("rows", SUB_BANKS.values(), ids=SUB_BANKS.keys())
@pytest.mark.parametrize("calibration", [Calibration(), Calibration(0.5, 0.8, "candidates")])
def test_lse_over_held_shards_is_one_pass_over_the_rows(banks, rows, calibration):
    plain, held, queries, candidates = banks
    settings = ScoringSettings(calibration=calibration)
    lse = method_named("lse")
    want = lse.score(bridge_of(plain, rows), queries, candidates, settings, 10)
    got = lse.score(bridge_of(held, rows), queries, candidates, settings, 10)
    assert torch.allclose(got.values, want.values, rtol=1e-6, atol=1e-5)
    assert held.scorer.asked == ["partial sums"]


@pytest.mark.parametrize("rows", SUB_BANKS.values(), ids=SUB_BANKS.keys())
def test_caption_takes_the_best_row_of_any_shard_and_the_first_on_a_tie(banks, rows):
    plain, held, queries, candidates = banks
    caption = method_named("caption")
    want = caption.score(bridge_of(plain, rows), queries, candidates, ScoringSettings(), 10)
    got = caption.score(bridge_of(held, rows), queries, candidates, ScoringSettings(), 10)
    assert torch.equal(got.bank_rows, want.bank_rows)
    assert torch.allclose(got.values, want.values, rtol=1e-6, atol=1e-6)
    assert torch.equal(got.order, want.order)
    if rows is None:
        assert int(got.bank_rows[0]) == 50  # row 700 is the same vector, later in the bank


@pytest.mark.parametrize("rows", SUB_BANKS.values(), ids=SUB_BANKS.keys())
def test_explain_names_the_rows_and_ess_of_one_pass(banks, rows):
    from ucl_cli.bridge.methods import remote_bridge

    plain, held, queries, candidates = banks
    pairs = [(0, 3), (1, 3), (2, 39), (4, 0)]
    calibration = Calibration(0.7, 1.3)
    local = bridge_of(plain, rows)
    want = explain(local, queries, candidates, pairs, 6, calibration=calibration)
    got = remote_bridge(bridge_of(held, rows)).explain(queries, candidates, pairs, 6, calibration)
    assert torch.equal(got.bank_indices, want.bank_indices)
    assert torch.allclose(got.weights, want.weights, rtol=1e-4, atol=1e-7)
    assert torch.allclose(got.effective_sample_size, want.effective_sample_size, rtol=1e-4)
    assert held.scorer.asked == ["explanations"]


def test_joined_explanations_of_parts_are_the_explanation_of_the_whole():
    rng = np.random.default_rng(3)
    left = torch.tensor(rng.normal(size=(3, 90)) * 4, dtype=torch.float32)
    right = torch.tensor(rng.normal(size=(90, 4)) * 4, dtype=torch.float32)
    right[:, 2] = -torch.inf  # a candidate with no finite path
    left[1, 30:60] = -1e30  # a part where one query has (almost) no mass
    rows, cols = torch.tensor([0, 1, 2, 1]), torch.tensor([0, 1, 2, 3])
    whole = explain_pairs(left, right, rows, cols, top=5)
    parts = []
    for m0, m1 in ((0, 30), (30, 60), (60, 90)):
        part = explain_pairs(left[:, m0:m1], right[m0:m1], rows, cols, top=5)
        numbered = torch.where(part.bank_indices >= 0, part.bank_indices + m0, NO_ROW)
        parts.append(type(part)(numbered, part.weights, part.effective_sample_size,
                                part.log_mass))  # fmt: skip
    joined = join_explanations(parts, top=5)
    assert torch.equal(joined.bank_indices, whole.bank_indices)
    assert torch.allclose(joined.weights, whole.weights, rtol=1e-5, atol=1e-7)
    assert torch.allclose(joined.effective_sample_size, whole.effective_sample_size, rtol=1e-5)
    assert (joined.bank_indices[2] == NO_ROW).all() and joined.effective_sample_size[2] == 0
    assert torch.isneginf(joined.log_mass[2])


def test_a_collection_search_reads_a_sharded_bridge_bank_joined_once_per_actor(banks):
    # A collection's shards are searched through the whole bridge bank: an actor joins the
    # bank's shards from disk once and keeps them for the next search.
    from ucl_cli.distributed.collection_tops import bridge_rows

    plain, held, _, _ = banks
    host = ShardHost(device="cpu")
    rows = bridge_rows(held.vectors("q"))
    assert len(rows.shards) == 4 and rows.matrix is None  # names travel, not rows
    first = rows.read(host)
    np.testing.assert_array_equal(first, plain.vectors("q"))
    assert rows.read(host) is first
