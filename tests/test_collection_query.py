"""Ranking a collection: a bank of audio or image files indexed once, queried without its files.

The specification: `--collection NAME` ranks the collection's stored vectors exactly as
`--candidates` ranks the same files (same scores, same order), names each hit by the path the
file was indexed under, combines with `--candidates`, and is refused when its vectors come from
other models or other weights. The streamed ranking over chunks of rows equals the one-pass
ranking, and `topk`'s certificates over the union of chunks are proofs against float64.
"""

from __future__ import annotations

import json
import math
import shutil
from itertools import pairwise
from pathlib import Path

import numpy as np
import planted_backend as planted
import pytest
import torch
from test_query import BANK_TEXTS, IMAGE_TEXT, TEXT_AUDIO, expected_score, index_planted

from ucl_cli.bank import IndexOptions, collect_file_items, index_items
from ucl_cli.bank.catalog import resolve_bank
from ucl_cli.bridge.candidate_sources import CandidateSource, rank_sources
from ucl_cli.bridge.methods import Bridge, BridgeSide, ScoringSettings, method_named
from ucl_cli.cli import app
from ucl_cli.estimators import bridge_scores


@pytest.fixture
def bank(plugin, runner, tmp_path) -> str:
    index_planted(runner, tmp_path / "corpus.txt", BANK_TEXTS, "planted")
    return "planted"


def build_collection(name: str, sources: list[Path], modality: str = "audio") -> Path:
    """A collection of `sources` embedded by the planted model for `modality` alone."""
    key = TEXT_AUDIO if modality == "audio" else IMAGE_TEXT
    encoder = planted.PlantedEncoder(key, "cpu")
    files = collect_file_items(sources, modality)
    path = resolve_bank(name)
    index_items(path, [encoder], files, IndexOptions(modality=modality))
    return path


def query(runner, *args) -> list[dict]:
    result = runner.invoke(app, ["query", "--device", "cpu", "--format", "jsonl", *map(str, args)])
    assert result.exit_code == 0, result.output
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def test_a_collection_ranks_its_files_as_candidates_would_and_names_them(
    bank, runner, media_dir
):
    build_collection("sfx", [media_dir / "audio"])
    image = media_dir / "images" / "concept3.png"
    from_collection = query(runner, image, "--collection", "sfx", "--bank", bank, "--top", "0")
    audio = media_dir / "audio"
    from_files = query(runner, image, "--candidates", audio, "--bank", bank, "--top", "0")

    assert [Path(h["candidate"]).name for h in from_collection] == [
        Path(h["candidate"]).name for h in from_files
    ]
    assert Path(from_collection[0]["candidate"]) == (media_dir / "audio" / "concept3.wav").resolve()
    for hit in from_collection:
        same = Path(hit["candidate"]).name == "concept3.wav"
        assert hit["score"] == pytest.approx(expected_score(same), abs=1e-4)
        assert hit["collection"] == "sfx" and hit["candidate_modality"] == "audio"
    assert all("collection" not in hit for hit in from_files)


def test_the_collections_files_are_never_opened(bank, runner, media_dir, tmp_path):
    library = tmp_path / "library"
    shutil.copytree(media_dir / "audio", library)
    build_collection("sfx", [library])
    shutil.rmtree(library)  # gone from disk: the stored vectors still rank
    image = media_dir / "images" / "concept1.png"
    hits = query(runner, image, "--collection", "sfx", "--bank", bank, "-n", "2")
    assert Path(hits[0]["candidate"]) == (library / "concept1.wav").resolve()
    assert len(hits) == 2


def test_collections_and_files_rank_as_one_set(bank, runner, media_dir, tmp_path):
    half_a, half_b = tmp_path / "a", tmp_path / "b"
    half_a.mkdir(), half_b.mkdir()
    for j in range(planted.CONCEPTS):
        shutil.copy(media_dir / "audio" / f"concept{j}.wav", (half_a if j % 2 else half_b))
    build_collection("odd", [half_a])
    image = media_dir / "images" / "concept4.png"
    hits = query(
        runner, image, "--collection", "odd", "--candidates", half_b, "--bank", bank, "-n", "0"
    )
    assert len(hits) == planted.CONCEPTS
    assert Path(hits[0]["candidate"]).name == "concept4.wav" and "collection" not in hits[0]
    assert {hit.get("collection") for hit in hits} == {None, "odd"}
    assert [hit["rank"] for hit in hits] == list(range(1, planted.CONCEPTS + 1))


def test_topk_over_a_collection_certifies_the_exact_leader(bank, runner, media_dir):
    build_collection("sfx", [media_dir / "audio"])
    image = media_dir / "images" / "concept5.png"
    hits = query(runner, image, "--collection", "sfx", "--bank", bank, "-m", "topk", "-n", "1")
    assert Path(hits[0]["candidate"]).name == "concept5.wav"
    assert hits[0]["certified"] is True
    assert hits[0]["lower"] <= expected_score(True) + 1e-4 <= hits[0]["upper"] + 2e-4


def test_an_image_collection_serves_audio_queries(bank, runner, media_dir):
    build_collection("photos", [media_dir / "images"], modality="image")
    clip = media_dir / "audio" / "concept2.wav"
    hits = query(runner, clip, "--collection", "photos", "--bank", bank, "-n", "1")
    assert Path(hits[0]["candidate"]).name == "concept2.png"
    assert hits[0]["candidate_modality"] == "image"


def test_a_bank_of_texts_is_not_a_collection(bank, runner, media_dir):
    result = runner.invoke(
        app, ["query", str(media_dir / "images" / "concept0.png"), "--collection", bank]
    )
    assert result.exit_code != 0
    assert "bank of texts" in result.output and f"--bank {bank}" in result.output


def test_collection_and_candidate_modalities_must_agree(bank, runner, media_dir):
    build_collection("sfx", [media_dir / "audio"])
    result = runner.invoke(
        app,
        [
            "query",
            str(media_dir / "images" / "concept0.png"),
            "--collection",
            "sfx",
            "--candidates",
            str(media_dir / "images"),
        ],
    )
    assert result.exit_code != 0 and "mix images and audio" in result.output


def test_no_candidates_at_all_is_a_usage_error(bank, runner, media_dir):
    result = runner.invoke(app, ["query", str(media_dir / "images" / "concept0.png")])
    assert result.exit_code != 0 and "--collection" in result.output


def test_a_missing_collection_is_named(bank, runner, media_dir):
    result = runner.invoke(
        app, ["query", str(media_dir / "images" / "concept0.png"), "--collection", "nope"]
    )
    assert result.exit_code != 0 and "nope" in result.output


def test_a_collection_embedded_by_other_weights_is_refused(bank, runner, media_dir, monkeypatch):
    monkeypatch.setenv("UCL_TEST_PLANTED_WEIGHTS", "sha256:" + "a" * 64)
    build_collection("sfx", [media_dir / "audio"])
    monkeypatch.setenv("UCL_TEST_PLANTED_WEIGHTS", "sha256:" + "b" * 64)
    index_planted(runner, media_dir / "corpus.txt", BANK_TEXTS, "planted_b")
    image = str(media_dir / "images" / "concept0.png")
    args = ["query", image, "--collection", "sfx", "--bank", "planted_b", "--device", "cpu"]
    result = runner.invoke(app, args)
    assert result.exit_code != 0
    assert "weights" in result.output and "sfx" in result.output


# --- the streamed ranking itself, against float64 -------------------------------------------


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _clustered(rng, count: int, centres: np.ndarray, spread: float) -> np.ndarray:
    picks = rng.integers(0, len(centres), count)
    return _unit(centres[picks] + spread * rng.standard_normal((count, centres.shape[1])))


def _bridge(rng, m: int, d: int, scales=(30.0, 20.0), centres=None, spread=0.3) -> Bridge:
    centres = _unit(rng.standard_normal((16, d))) if centres is None else centres
    left = _clustered(rng, m, centres, spread)
    right = _clustered(rng, m, centres, spread)
    return Bridge(BridgeSide(left, scales[0]), BridgeSide(right, scales[1]))


def _exact(bridge: Bridge, queries: np.ndarray, candidates: np.ndarray) -> torch.Tensor:
    """The bridge score in float64 from the float32 vectors: the truth certificates speak of."""
    q, c = torch.from_numpy(queries).double(), torch.from_numpy(candidates).double()
    left = bridge.query_side.scale * (q @ torch.from_numpy(bridge.query_side.bank).double().T)
    right = bridge.candidate_side.scale * (
        torch.from_numpy(bridge.candidate_side.bank).double() @ c.T
    )
    return bridge_scores(left, right)


def _sources(candidates: np.ndarray, cuts: list[int]) -> list[CandidateSource]:
    edges = [0, *cuts, len(candidates)]
    return [
        CandidateSource(candidates[a:b], lambda row, a=a: Path(f"c{a + row}"), f"s{i}")
        for i, (a, b) in enumerate(pairwise(edges))
    ]


def _global_ids(ranked, sources) -> np.ndarray:
    offsets = np.cumsum([0] + [len(s) for s in sources])
    return offsets[ranked.source.numpy()] + ranked.row.numpy()


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_streamed_lse_over_several_sources_is_the_exact_top_n(chunk):
    rng = np.random.default_rng(0)
    bridge = _bridge(rng, 300, 12)
    queries = _unit(rng.standard_normal((4, 12)))
    candidates = _unit(rng.standard_normal((97, 12)))
    sources = _sources(candidates, [30, 31, 80])
    ranked = rank_sources(
        method_named("lse"), bridge, queries, sources, ScoringSettings(), 10, chunk_rows=chunk
    )
    exact = _exact(bridge, queries, candidates)
    assert ranked.total == 97
    truth = exact.argsort(dim=1, descending=True, stable=True)[:, :10].numpy()
    np.testing.assert_array_equal(_global_ids(ranked, sources), truth)
    np.testing.assert_allclose(
        ranked.values.double().numpy(), np.take_along_axis(exact.numpy(), truth, 1), atol=1e-4
    )


def test_keeping_everything_returns_every_candidate_once():
    rng = np.random.default_rng(1)
    bridge = _bridge(rng, 50, 8)
    queries = _unit(rng.standard_normal((2, 8)))
    candidates = _unit(rng.standard_normal((23, 8)))
    sources = _sources(candidates, [5])
    ranked = rank_sources(
        method_named("lse"), bridge, queries, sources, ScoringSettings(), None, chunk_rows=4
    )
    for n in range(2):
        assert sorted(_global_ids(ranked, sources)[n].tolist()) == list(range(23))


def _nearest_for(bridge: Bridge) -> Bridge:
    """The candidate side with an exact FAISS index, as `topk` needs."""
    import faiss

    from ucl_cli.bank.nearest import CertifiedNearest

    side = bridge.candidate_side
    index = faiss.IndexFlatIP(side.bank.shape[1])
    index.add(side.bank)
    nearest = CertifiedNearest(index, side.bank)
    return Bridge(bridge.query_side, BridgeSide(side.bank, side.scale, nearest))


@pytest.mark.parametrize(
    ("case", "spread", "scales"),
    [
        ("clustered", 0.3, (30.0, 20.0)),
        ("tight clusters", 0.01, (100.0, 33.0)),
        ("huge scales", 0.2, (2000.0, 1500.0)),
        ("tiny scales", 0.2, (1e-3, 2e-3)),
    ],
)
def test_topk_certificates_over_chunks_hold_against_float64(case, spread, scales):
    rng = np.random.default_rng(hash(case) % 2**32)
    d = 16
    centres = _unit(rng.standard_normal((8, d)))
    bridge = _nearest_for(_bridge(rng, 400, d, scales, centres, spread))
    queries = _clustered(rng, 3, centres, spread)
    candidates = _clustered(rng, 120, centres, spread)
    sources = _sources(candidates, [40, 41])
    settings = ScoringSettings(nearest_rows=16)
    ranked = rank_sources(
        method_named("topk"), bridge, queries, sources, settings, 5, chunk_rows=13
    )
    exact = _exact(bridge, queries, candidates)
    ids = _global_ids(ranked, sources)
    truth_order = exact.argsort(dim=1, descending=True, stable=True).numpy()
    for n in range(3):
        for p in range(5):
            k = ids[n, p]
            # every kept bound brackets the exact score (float32 bounds: a few ulps of slack)
            slack = 1e-5 * (1 + abs(float(exact[n, k])))
            assert float(ranked.lower[n, p]) <= float(exact[n, k]) + slack
            assert float(exact[n, k]) <= float(ranked.upper[n, p]) + slack
            if ranked.certified[n, p]:
                # a certified position holds the candidate whose exact score has that rank
                # (or one tied with it to within float64 rounding)
                assert math.isclose(
                    float(exact[n, k]), float(exact[n, truth_order[n, p]]), abs_tol=1e-9
                ), (case, n, p)


def test_a_near_tie_across_chunks_is_never_certified():
    """Two candidates in different chunks with equal vectors: no bound can order them, so
    neither position they hold may be certified, even though each led its own chunk."""
    rng = np.random.default_rng(5)
    d = 8
    bridge = _nearest_for(_bridge(rng, 200, d))
    queries = _unit(rng.standard_normal((1, d)))
    candidates = _unit(rng.standard_normal((20, d)))
    best = int(_exact(bridge, queries, candidates)[0].argmax())
    twin = candidates[best].copy()
    candidates = np.concatenate([candidates, twin[None]], axis=0)  # its twin, in a later chunk
    sources = _sources(candidates, [10])
    ranked = rank_sources(
        method_named("topk"), bridge, queries, sources, ScoringSettings(), 3, chunk_rows=10
    )
    ids = set(_global_ids(ranked, sources)[0, :2].tolist())
    assert ids == {best, 20}
    assert not bool(ranked.certified[0, 0]) and not bool(ranked.certified[0, 1])


# --- certified search through the collection's index ----------------------------------------


def _collection_index(vectors: np.ndarray, nlist: int):
    import faiss

    if nlist == 0:
        index = faiss.IndexFlatIP(vectors.shape[1])
    else:
        factory = f"IVF{nlist},Flat"
        index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
        index.train(vectors)
    index.add(vectors)
    return index


def _searched_source(vectors: np.ndarray, nlist: int, nprobe: int = 2) -> CandidateSource:
    from ucl_cli.bank.nearest import CertifiedNearest
    from ucl_cli.bank.norms import largest_row_norm

    nearest = CertifiedNearest(_collection_index(vectors, nlist), vectors, nprobe=nprobe)
    return CandidateSource(
        vectors,
        lambda row: Path(f"c{row}"),
        "lib",
        nearest,
        largest_row_norm(vectors),
    )


def _check_certificates(ranked, exact: torch.Tensor, ids: np.ndarray, label: str) -> int:
    """Every bound brackets the exact score and every certified position holds a candidate of
    exactly that rank (float64, up to ties); returns how many positions were certified."""
    truth = exact.argsort(dim=1, descending=True, stable=True).numpy()
    proven = 0
    for n in range(ids.shape[0]):
        for p in range(ids.shape[1]):
            k = ids[n, p]
            value = float(exact[n, k])
            slack = 1e-5 * (1 + abs(value))
            assert float(ranked.lower[n, p]) <= value + slack, (label, n, p)
            assert value <= float(ranked.upper[n, p]) + slack, (label, n, p)
            if ranked.certified[n, p]:
                proven += 1
                assert math.isclose(value, float(exact[n, truth[n, p]]), abs_tol=1e-9), (
                    label,
                    n,
                    p,
                )
    return proven


# The ways a collection is searched: list by list from the per-list table (an IVF collection
# through a bank of modest size), or from the bank rows that carry the weight (a Flat collection,
# or a bank too large for the table), each list visit by the index or as one matrix product.
SEARCHES = ["lists", "heavy rows, index scans", "heavy rows, matrix product"]


def use_search(search: str, monkeypatch) -> None:
    import ucl_cli.bridge.collection_search as collection_search
    import ucl_cli.bridge.list_search as list_search

    if search != "lists":
        monkeypatch.setattr(list_search, "TABLE_ELEMENTS", 0)
    if search.endswith("matrix product"):  # every full visit as one matrix product
        monkeypatch.setattr(collection_search, "SCAN_ALL_FROM_ROWS", 1)


@pytest.mark.parametrize(
    ("case", "spread", "scales", "nlist"),
    [
        ("clustered, IVF", 0.3, (100.0, 33.0), 16),
        ("clustered, Flat", 0.3, (100.0, 33.0), 0),
        ("tight clusters, IVF", 0.02, (100.0, 33.0), 16),
        ("huge scales, IVF", 0.2, (3000.0, 2000.0), 16),
        ("tiny scales, IVF", 0.2, (1e-3, 2e-3), 8),
    ],
)
@pytest.mark.parametrize("search", SEARCHES)
def test_searching_a_collection_through_its_index_certifies_only_the_truth(
    case, spread, scales, nlist, search, monkeypatch
):
    use_search(search, monkeypatch)
    rng = np.random.default_rng(abs(hash(case)) % 2**32)
    d = 16
    centres = _unit(rng.standard_normal((12, d)))
    bridge = _bridge(rng, 300, d, scales, centres, spread)
    queries = _clustered(rng, 3, centres, spread)
    collection = _clustered(rng, 3000, centres, spread)
    source = _searched_source(collection, nlist)
    ranked = rank_sources(method_named("topk"), bridge, queries, [source], ScoringSettings(), 10)
    exact = _exact(bridge, queries, collection)
    ids = _global_ids(ranked, [source])
    proven = _check_certificates(ranked, exact, ids, case)
    if case.startswith("clustered"):
        assert proven == 30, "the trained-scale clustered case certifies its whole top 10"


@pytest.mark.parametrize("search", SEARCHES)
def test_the_index_search_agrees_with_the_exact_stream(search, monkeypatch):
    use_search(search, monkeypatch)
    rng = np.random.default_rng(11)
    d = 16
    centres = _unit(rng.standard_normal((20, d)))
    bridge = _bridge(rng, 500, d, (100.0, 33.0), centres, 0.25)
    queries = _clustered(rng, 4, centres, 0.25)
    collection = _clustered(rng, 4000, centres, 0.25)
    searched = rank_sources(
        method_named("topk"), bridge, queries, [_searched_source(collection, 32)],
        ScoringSettings(), 10,
    )
    streamed = rank_sources(
        method_named("lse"), bridge, queries, [CandidateSource(collection, Path)],
        ScoringSettings(), 10,
    )
    assert bool(searched.certified.all())
    np.testing.assert_array_equal(searched.row.numpy(), streamed.row.numpy())
    np.testing.assert_allclose(
        searched.values.numpy(), streamed.values.double().numpy(), rtol=1e-5, atol=1e-4
    )


@pytest.mark.parametrize("search", SEARCHES)
def test_twins_in_a_collection_are_never_ordered_by_the_certificate(search, monkeypatch):
    use_search(search, monkeypatch)
    rng = np.random.default_rng(3)
    d = 16
    centres = _unit(rng.standard_normal((8, d)))
    bridge = _bridge(rng, 200, d, (100.0, 33.0), centres, 0.2)
    queries = _clustered(rng, 1, centres, 0.2)
    collection = _clustered(rng, 1000, centres, 0.2)
    best = int(_exact(bridge, queries, collection)[0].argmax())
    collection = np.concatenate([collection, collection[best][None]], axis=0)
    source = _searched_source(collection, 8)
    ranked = rank_sources(method_named("topk"), bridge, queries, [source], ScoringSettings(), 3)
    assert set(ranked.row[0, :2].tolist()) == {best, 1000}
    assert not bool(ranked.certified[0, 0]) and not bool(ranked.certified[0, 1])
    assert bool(ranked.certified[0, 2]), "the third is proven below both twins"


def test_a_spent_budget_marks_positions_uncertified_but_keeps_valid_bounds(monkeypatch):
    """Flat query weights (small scales) leave the index little to prune with: with a small
    budget the search stops, and what it returns is bracketed, with nothing falsely certified."""
    import ucl_cli.bridge.collection_search as collection_search

    use_search("heavy rows, index scans", monkeypatch)  # the list walk has no budget to spend
    monkeypatch.setattr(collection_search, "MAX_RETRIEVED_PER_ROW", 32)
    rng = np.random.default_rng(4)
    d = 16
    bridge = _bridge(rng, 400, d, (0.5, 0.5))
    queries = _unit(rng.standard_normal((2, d)))
    collection = _unit(rng.standard_normal((20000, d)))
    source = _searched_source(collection, 16, nprobe=1)
    settings = ScoringSettings(max_nearest_rows=4)
    ranked = rank_sources(method_named("topk"), bridge, queries, [source], settings, 10)
    exact = _exact(bridge, queries, collection)
    _check_certificates(ranked, exact, _global_ids(ranked, [source]), "budget")
    assert not bool(ranked.certified.all())


@pytest.mark.parametrize("search", SEARCHES)
def test_weight_spread_over_the_bank_scores_every_row_and_certifies_the_exact_top(
    search, monkeypatch
):
    """Weight spread over the whole bank still certifies the exact top: the heavy-row search
    scores every row when it would retrieve much of the collection; the list walk's table
    bounds each list through every bank row."""
    use_search(search, monkeypatch)
    rng = np.random.default_rng(4)
    d = 16
    bridge = _bridge(rng, 400, d, (0.5, 0.5))
    queries = _unit(rng.standard_normal((2, d)))
    collection = _unit(rng.standard_normal((2000, d)))
    source = _searched_source(collection, 16, nprobe=1)
    ranked = rank_sources(method_named("topk"), bridge, queries, [source], ScoringSettings(), 10)
    exact = _exact(bridge, queries, collection)
    ids = _global_ids(ranked, [source])
    assert _check_certificates(ranked, exact, ids, "every row") == 20
    np.testing.assert_array_equal(
        ids, exact.argsort(dim=1, descending=True, stable=True)[:, :10].numpy()
    )


def test_normalised_topk_over_a_collection_is_streamed_and_still_certified():
    from ucl_cli.calibration import Calibration

    rng = np.random.default_rng(6)
    d = 16
    centres = _unit(rng.standard_normal((8, d)))
    bridge = _nearest_for(_bridge(rng, 200, d, (100.0, 33.0), centres, 0.2))
    queries = _clustered(rng, 2, centres, 0.2)
    collection = _clustered(rng, 500, centres, 0.2)
    calibration = Calibration.parse("0.5", "candidates")
    settings = ScoringSettings(calibration=calibration)
    ranked = rank_sources(
        method_named("topk"), bridge, queries, [_searched_source(collection, 8)], settings, 5,
        chunk_rows=128,
    )
    streamed = rank_sources(
        method_named("lse"), bridge, queries, [CandidateSource(collection, Path)], settings, 5
    )
    certified = ranked.certified.numpy()
    np.testing.assert_array_equal(
        ranked.row.numpy()[certified], streamed.row.numpy()[certified]
    )
