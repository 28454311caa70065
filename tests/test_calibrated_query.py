"""Tempered and self-normalised scores through the query path: `lse`, `topk`, `--explain`, the
CLI flags of `ucl query` and `ucl eval`, and what each records.

The references are float64 computations from the stored float32 vectors (what a certificate is
about); the default calibration must leave every score exactly what it was.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import planted_backend as planted
import pytest
import torch
from test_certificates import (
    adversarial_case,
    check_against_exact,
    flat,
    unit,
)
from test_eval import concept_manifest, run_eval
from test_query import image_to_audio, index_planted, jsonl, run_query

from ucl_cli.bank.nearest import CertifiedNearest
from ucl_cli.bridge.methods import (
    METHOD_TABLE,
    Bridge,
    BridgeSide,
    ScoringSettings,
    check_calibration,
)
from ucl_cli.bridge.scoring import explain, lse_scores, topk_scores
from ucl_cli.calibration import Calibration
from ucl_cli.errors import UsageError
from ucl_cli.estimators import combine_partials, partial_bridge_scores

CALIBRATIONS = [
    Calibration(),
    Calibration(0.25, 0.25, "candidates"),
    Calibration(0.25, 0.25, "none"),
    Calibration(1.0, 1.0, "candidates"),
    Calibration(0.5, 2.0, "candidates"),
    Calibration(1.5, 0.1, "none"),
]


def reference(queries, candidates, left_bank, right_bank, s1, s2, calibration) -> np.ndarray:
    """The calibrated score in float64 from the stored float32 vectors, term by term."""
    t1, t2 = calibration.query_temperature, calibration.candidate_temperature
    left = t1 * s1 * (queries.astype(np.float64) @ left_bank.astype(np.float64).T)  # [N, M]
    right = t2 * s2 * (right_bank.astype(np.float64) @ candidates.astype(np.float64).T)  # [M, K]
    left, right = torch.from_numpy(left), torch.from_numpy(right)
    log_m = math.log(left_bank.shape[0])
    score = torch.logsumexp(left[:, :, None] + right[None], dim=1) - log_m
    if calibration.normalize == "candidates":
        score = score - (torch.logsumexp(right, dim=0) - log_m)[None, :]
    return score.numpy()


def random_setting(seed: int, bank: int = 700, dim: int = 24):
    rng = np.random.default_rng(seed)
    left_bank = unit(rng.standard_normal((bank, dim)))
    right_bank = unit(left_bank + 0.3 * rng.standard_normal((bank, dim)))
    queries = unit(left_bank[rng.integers(bank, size=4)] + 0.2 * rng.standard_normal((4, dim)))
    candidates = unit(right_bank[rng.integers(bank, size=9)] + 0.2 * rng.standard_normal((9, dim)))
    return queries, candidates, left_bank, right_bank


# --- lse --------------------------------------------------------------------------------------


def test_lse_with_the_default_calibration_is_bit_for_bit_the_papers_estimator():
    queries, candidates, left_bank, right_bank = random_setting(0)
    bridge = Bridge(BridgeSide(left_bank, 100.0), BridgeSide(right_bank, 33.37))
    # What `lse_scores` computed before calibrations existed: the plain sharded bridge sum.
    q, c = torch.from_numpy(queries), torch.from_numpy(candidates)
    parts = []
    for m0 in range(0, len(left_bank), 128):
        left = 100.0 * (q @ torch.from_numpy(left_bank[m0 : m0 + 128]).T)
        right = 33.37 * (torch.from_numpy(right_bank[m0 : m0 + 128]) @ c.T)
        parts.append(partial_bridge_scores(left, right))
    before = combine_partials(parts)
    for calibration in (None, Calibration(), Calibration.parse("1", "none")):
        got = lse_scores(bridge, queries, candidates, chunk=128, calibration=calibration)
        assert torch.equal(got.values, before)


@pytest.mark.parametrize("calibration", CALIBRATIONS, ids=str)
@pytest.mark.parametrize("chunk", [64, 1 << 16])
def test_lse_matches_the_float64_reference_over_any_chunking(calibration, chunk):
    queries, candidates, left_bank, right_bank = random_setting(1)
    s1, s2 = 100.0, 33.0
    bridge = Bridge(BridgeSide(left_bank, s1), BridgeSide(right_bank, s2))
    got = lse_scores(bridge, queries, candidates, chunk=chunk, calibration=calibration)
    expected = reference(queries, candidates, left_bank, right_bank, s1, s2, calibration)
    np.testing.assert_allclose(got.values.double().numpy(), expected, atol=2e-4, rtol=0)
    assert torch.equal(got.order, got.values.argsort(dim=1, descending=True, stable=True))


def test_settings_reach_lse_through_the_method_table():
    queries, candidates, left_bank, right_bank = random_setting(2)
    bridge = Bridge(BridgeSide(left_bank, 50.0), BridgeSide(right_bank, 20.0))
    calibration = Calibration(0.25, 0.25, "candidates")
    settings = ScoringSettings(calibration=calibration)
    got = METHOD_TABLE["lse"].score(bridge, queries, candidates, settings, 3)
    expected = reference(queries, candidates, left_bank, right_bank, 50.0, 20.0, calibration)
    np.testing.assert_allclose(got.values.double().numpy(), expected, atol=1e-4, rtol=0)


# --- topk: certificates about the exact calibrated score --------------------------------------


@pytest.mark.parametrize("calibration", CALIBRATIONS[1:], ids=str)
@pytest.mark.parametrize(
    ("seed", "centres", "per_centre", "nlist"),
    [(0, 40, 20, None), (2, 200, 60, 200)],
)
def test_topk_bounds_contain_the_exact_calibrated_score_and_certify_true_ranks(
    calibration, seed, centres, per_centre, nlist
):
    left_bank, right_bank, bridge, queries, candidates = adversarial_case(
        seed, centres, per_centre, nlist, aimed=20
    )
    scores = topk_scores(
        bridge, queries, candidates, top=10, nearest_rows=8, calibration=calibration
    )
    exact = reference(queries, candidates, left_bank, right_bank, 100.0, 33.0, calibration)
    checked, certified = check_against_exact(scores, exact)
    assert checked == 3 * len(candidates)
    assert certified >= 1  # sound, and not vacuous


@pytest.mark.parametrize("calibration", CALIBRATIONS[1:], ids=str)
def test_topk_on_a_fully_known_bank_meets_lse_with_calibration(calibration):
    # Every bank row in both top lists: the bounds close on the exact score (up to rounding),
    # so topk's estimate is lse's score and the two rankings agree.
    queries, candidates, left_bank, right_bank = random_setting(3, bank=300)
    left = BridgeSide(left_bank, 60.0)
    right = BridgeSide(right_bank, 25.0, CertifiedNearest(flat(right_bank), right_bank))
    bridge = Bridge(left, right)
    bounded = topk_scores(
        bridge, queries, candidates, top=9, nearest_rows=300, calibration=calibration
    )
    exact = lse_scores(bridge, queries, candidates, calibration=calibration).values.double()
    assert bool((bounded.lower <= exact + 1e-9).all() and (exact - 1e-9 <= bounded.upper).all())
    assert float((bounded.upper - bounded.lower).max()) < 1e-3
    check_against_exact(
        bounded, reference(queries, candidates, left_bank, right_bank, 60.0, 25.0, calibration)
    )


# --- explain: the weights the calibrated score uses -------------------------------------------


@pytest.mark.parametrize("calibration", CALIBRATIONS, ids=str)
def test_explain_weights_and_ess_are_the_tempered_softmax(calibration):
    queries, candidates, left_bank, right_bank = random_setting(4, bank=200)
    s1, s2 = 80.0, 30.0
    bridge = Bridge(BridgeSide(left_bank, s1), BridgeSide(right_bank, s2))
    pairs = [(0, 0), (1, 3), (3, 8), (2, 2)]
    got = explain(bridge, queries, candidates, pairs, 5, calibration=calibration)
    t1, t2 = calibration.query_temperature, calibration.candidate_temperature
    left = t1 * s1 * (queries.astype(np.float64) @ left_bank.astype(np.float64).T)
    right = t2 * s2 * (right_bank.astype(np.float64) @ candidates.astype(np.float64).T)
    for p, (n, k) in enumerate(pairs):
        weights = torch.softmax(torch.from_numpy(left[n] + right[:, k]), dim=0)
        top = weights.topk(5)
        assert got.bank_indices[p].tolist() == top.indices.tolist()
        np.testing.assert_allclose(got.weights[p].double(), top.values, atol=1e-4, rtol=0)
        ess = float(1.0 / (weights * weights).sum())
        assert float(got.effective_sample_size[p]) == pytest.approx(ess, rel=1e-3)


def test_tempering_spreads_the_weights_over_more_bank_rows():
    queries, candidates, left_bank, right_bank = random_setting(5, bank=200)
    bridge = Bridge(BridgeSide(left_bank, 100.0), BridgeSide(right_bank, 33.0))
    pairs = [(0, 0), (1, 1)]
    paper = explain(bridge, queries, candidates, pairs, 3).effective_sample_size
    tempered = explain(
        bridge, queries, candidates, pairs, 3, calibration=Calibration(0.25, 0.25)
    ).effective_sample_size
    assert bool((tempered > paper).all())


# --- which methods take a calibration, and the Python API -------------------------------------


def test_caption_and_direct_refuse_a_calibration_naming_the_flags():
    tempered = ScoringSettings(calibration=Calibration(0.5, 0.5))
    for name in ("caption", "direct"):
        assert not METHOD_TABLE[name].calibrates
        check_calibration(METHOD_TABLE[name], ScoringSettings())  # the default is fine
        with pytest.raises(UsageError, match="--temperature and --normalize"):
            check_calibration(METHOD_TABLE[name], tempered)
    for name in ("lse", "topk"):
        assert METHOD_TABLE[name].calibrates
        check_calibration(METHOD_TABLE[name], tempered)


def test_the_python_api_takes_a_calibration():
    import ucl_cli
    from ucl_cli import Calibration as Exported
    from ucl_cli import QueryOptions
    from ucl_cli import ScoringSettings as Settings

    assert Exported is Calibration and "Calibration" in ucl_cli.__all__
    options = QueryOptions(scoring=Settings(calibration=Exported.parse("0.25", "candidates")))
    assert options.scoring.calibration == Calibration(0.25, 0.25, "candidates")
    assert QueryOptions().scoring.calibration.is_paper
    with pytest.raises(UsageError):
        Settings(calibration="0.25")  # type: ignore[arg-type]


def test_the_calibration_settings_import_no_torch():
    code = (
        "import sys; from ucl_cli.calibration import Calibration; "
        "from ucl_cli.bridge.methods import ScoringSettings; ScoringSettings(); "
        "assert 'torch' not in sys.modules and 'numpy' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# --- the CLI ----------------------------------------------------------------------------------

IMAGE_TEXT, TEXT_AUDIO = "planted:image-text", "planted:text-audio"
BANK_TEXTS = [f"concept {j}" for j in range(planted.CONCEPTS)] + ["a distractor"]
S1, S2 = planted.SCALES[IMAGE_TEXT], planted.SCALES[TEXT_AUDIO]


def planted_score(same: bool, t1: float, t2: float, normalize: str) -> float:
    """The planted models' calibrated score: a concept's bank text is the only row that
    matches its image (cosine 1) and its sound; every other cosine is 0."""
    m = len(BANK_TEXTS)
    if same:
        score = math.log(math.exp(t1 * S1 + t2 * S2) + m - 1) - math.log(m)
    else:
        score = math.log(math.exp(t1 * S1) + math.exp(t2 * S2) + m - 2) - math.log(m)
    if normalize == "candidates":
        score -= math.log(math.exp(t2 * S2) + m - 1) - math.log(m)
    return score


@pytest.fixture
def bank(plugin, runner, tmp_path) -> str:
    index_planted(runner, tmp_path / "corpus.txt", BANK_TEXTS, "planted")
    return "planted"


def test_query_rows_record_the_papers_estimator_by_default(bank, runner, media_dir):
    result = run_query(runner, *image_to_audio(media_dir, bank, 2), "--top", "0")
    assert result.exit_code == 0, result.output
    for hit in jsonl(result):
        assert hit["temperature"] == [1.0, 1.0] and hit["normalize"] == "none"
        same = Path(hit["candidate"]).name == "concept2.wav"
        assert hit["score"] == pytest.approx(planted_score(same, 1.0, 1.0, "none"), abs=1e-4)


@pytest.mark.parametrize(
    ("flags", "t1", "t2", "normalize"),
    [
        (("--temperature", "0.25", "--normalize", "candidates"), 0.25, 0.25, "candidates"),
        (("--temperature", "0.5,2"), 0.5, 2.0, "none"),
        (("--normalize", "candidates"), 1.0, 1.0, "candidates"),
    ],
)
@pytest.mark.parametrize("method", ["lse", "topk"])
def test_query_flags_reach_the_scores_and_every_row(
    bank, runner, media_dir, flags, t1, t2, normalize, method
):
    args = [*image_to_audio(media_dir, bank, 3), "--top", "0", "--method", method, *flags]
    result = run_query(runner, *args, "--explain", "2")
    assert result.exit_code == 0, result.output
    hits = jsonl(result)
    assert Path(hits[0]["candidate"]).name == "concept3.wav"
    for hit in hits:
        assert hit["temperature"] == [t1, t2] and hit["normalize"] == normalize
        same = Path(hit["candidate"]).name == "concept3.wav"
        expected = planted_score(same, t1, t2, normalize)
        if method == "lse":
            assert hit["score"] == pytest.approx(expected, abs=1e-4)
        else:
            assert hit["lower"] - 1e-4 <= expected <= hit["upper"] + 1e-4
        assert "effective_sample_size" in hit
    if method == "topk":
        assert hits[0]["certified"] is True


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--temperature", "0"), "--temperature"),
        (("--temperature", "hot"), "--temperature"),
        (("--temperature", "1,2,3"), "--temperature"),
        (("--temperature", "nan"), "--temperature"),
        (("--normalize", "bank"), "--normalize"),
        (("--method", "caption", "--temperature", "0.5"), "--temperature and --normalize"),
        (("--method", "direct", "--normalize", "candidates"), "--temperature and --normalize"),
    ],
)
def test_bad_calibrations_are_usage_errors_before_any_model_loads(
    runner, media_dir, monkeypatch, flags, message
):
    from ucl_cli.commands import query as query_command

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(query_command, "load_models_and_bank", no_models)
    result = run_query(runner, *image_to_audio(media_dir, "anything", 1), *flags)
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_query_help_explains_both_flags(runner):
    result = runner.invoke(app_for_help(), ["query", "--help"], terminal_width=200)
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--temperature" in text and "--normalize" in text
    assert "paper's estimator" in text


def app_for_help():
    from ucl_cli.cli import app

    return app


# --- eval -------------------------------------------------------------------------------------


@pytest.fixture
def eval_bank(plugin, runner, tmp_path) -> str:
    from test_eval import PLANTED_BANK

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(PLANTED_BANK) + "\n")
    models = ["--image-text-model", IMAGE_TEXT, "--text-audio-model", TEXT_AUDIO]
    result = runner.invoke(app_for_help(), ["index", str(corpus), "--bank", "planted", *models])
    assert result.exit_code == 0, result.output
    return "planted"


def test_eval_records_the_calibration_and_says_where_it_applies(eval_bank, runner, tmp_path):
    manifest = concept_manifest(tmp_path / "data", range(6))
    common = ["--bank", eval_bank, "--trials", 2, "--candidates", 4, "--methods", "lse,caption"]
    out = tmp_path / "tempered.json"
    flags = ("--temperature", "0.25", "--normalize", "candidates")
    result = run_eval(runner, manifest, *common, *flags, "--out", out)
    assert result.exit_code == 0, result.output
    calibration = json.loads(out.read_text())["options"]["scoring"]["calibration"]
    assert calibration["temperature"] == [0.25, 0.25]
    assert calibration["normalize"] == "candidates"
    assert calibration["paper"] is False and calibration["applies_to"] == ["lse"]
    assert "not the paper's estimator" in " ".join(result.stdout.split())
    assert "applied to lse only" in " ".join(result.stderr.split())

    default_out = tmp_path / "paper.json"
    plain = run_eval(runner, manifest, *common, "--out", default_out)
    assert plain.exit_code == 0, plain.output
    calibration = json.loads(default_out.read_text())["options"]["scoring"]["calibration"]
    assert calibration["temperature"] == [1.0, 1.0] and calibration["normalize"] == "none"
    assert calibration["paper"] is True
    assert "paper's estimator" not in plain.stdout + plain.stderr


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (("--temperature", "-1"), "--temperature"),
        (("--normalize", "queries"), "--normalize"),
        (("--methods", "caption,direct", "--temperature", "0.5"), "--temperature and --normalize"),
    ],
)
def test_eval_refuses_bad_calibrations_before_any_model_loads(
    runner, tmp_path, monkeypatch, flags, message
):
    from ucl_cli.commands import eval as eval_command

    def no_models(*args, **kwargs):
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(eval_command, "load_models_and_bank", no_models)
    manifest = concept_manifest(tmp_path / "data", range(4))
    result = run_eval(runner, manifest, "--trials", 1, "--candidates", 2, *flags)
    assert result.exit_code == 2, result.output
    assert message in result.output
