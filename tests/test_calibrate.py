"""`ucl calibrate`: temperatures and normalisation chosen by cross-validation, stored in the bank,
and used by `ucl query` / `ucl eval` until the bank or the models change.

The planted case: pairs drawn from a model whose exact posterior IS the tempered, self-
normalised bridge sum at a known temperature. A bank item m is drawn uniformly, then the query
a ~ vMF(b1_m, kappa) and the candidate c ~ vMF(b2_m, kappa) on the sphere. The vMF normaliser
does not depend on the mean, so p(m | a) = softmax_m(kappa <a, b1_m>) and
p(c | m) / p(c) = exp(kappa <c, b2_m>) / mean_m' exp(kappa <c, b2_m'>): with logit scale s on
both models, p(c | a) / p(c) is the bridge sum at t1 = t2 = kappa / s, normalised over the
candidates. Ranking a trial by the true posterior is Bayes-optimal, so that is the calibration
to recover.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from test_eval import IMAGE_TEXT, PLANTED_BANK, TEXT_AUDIO, concept_manifest

from ucl_cli.bank import resolve_bank, save_bank, text_item
from ucl_cli.bank.calibrations import (
    CALIBRATION_FILE,
    applicable_calibration,
    read_calibrations,
    store_calibration,
)
from ucl_cli.bridge.methods import Bridge
from ucl_cli.calibration import Calibration
from ucl_cli.cli import app
from ucl_cli.encoders.base import Encoder
from ucl_cli.errors import UsageError
from ucl_cli.evaluation.cross_validation import (
    CalibrateOptions,
    cross_validated_choices,
    fit_calibration,
    fold_trials,
)
from ucl_cli.modality import Modality

DIM, BANK_ROWS, PAIRS = 8, 200, 2000
SCALE, KAPPA = 80.0, 20.0  # the planted temperature: KAPPA / SCALE = 0.25


class VectorEncoder(Encoder):
    """Only what a bank and a bridge read of a model: key, dimension, logit scale."""

    def __init__(self, key: str, modalities: tuple[str, ...]):
        self.key = key
        self.modalities = frozenset(Modality(m) for m in modalities)
        self.dim = DIM
        self.logit_scale = SCALE
        self.preprocessing = {"planted": key}
        self.device = "cpu"

    def _embed_batch(self, modality, batch):
        raise AssertionError("the planted pairs are given as vectors")


def unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def von_mises_fisher(means: np.ndarray, kappa: float, rng: np.random.Generator) -> np.ndarray:
    """One draw around each row of `means` (Wood's rejection sampler for the cosine w)."""
    n, d = means.shape
    b = (-2 * kappa + math.sqrt(4 * kappa**2 + (d - 1) ** 2)) / (d - 1)
    x0 = (1 - b) / (1 + b)
    c = kappa * x0 + (d - 1) * math.log(1 - x0**2)
    w, todo = np.empty(n), np.arange(n)
    while todo.size:
        z = rng.beta((d - 1) / 2, (d - 1) / 2, size=todo.size)
        proposal = (1 - (1 + b) * z) / (1 - (1 - b) * z)
        accept = kappa * proposal + (d - 1) * np.log(1 - x0 * proposal) - c >= np.log(
            rng.uniform(size=todo.size)
        )
        w[todo[accept]] = proposal[accept]
        todo = todo[~accept]
    tangent = rng.standard_normal((n, d))
    tangent = unit_rows(tangent - (tangent * means).sum(1, keepdims=True) * means)
    return w[:, None] * means + np.sqrt(1 - w**2)[:, None] * tangent


@pytest.fixture(scope="module")
def planted_pairs(tmp_path_factory):
    rng = np.random.default_rng(0)
    b1 = unit_rows(rng.standard_normal((BANK_ROWS, DIM))).astype(np.float32)
    b2 = unit_rows(rng.standard_normal((BANK_ROWS, DIM))).astype(np.float32)
    models = [
        VectorEncoder("v:image-text", ("image", "text")),
        VectorEncoder("v:text-audio", ("text", "audio")),
    ]
    items = [text_item(f"text {m}") for m in range(BANK_ROWS)]
    path = tmp_path_factory.mktemp("vmf") / "bank"
    bank = save_bank(path, items, [b1, b2], models)
    rows = rng.integers(BANK_ROWS, size=PAIRS)
    queries = von_mises_fisher(b1[rows].astype(np.float64), KAPPA, rng).astype(np.float32)
    candidates = von_mises_fisher(b2[rows].astype(np.float64), KAPPA, rng).astype(np.float32)
    yield queries, candidates, Bridge.of(bank, *models), path
    bank.close()


def test_cross_validation_recovers_the_planted_temperature_with_normalisation(planted_pairs):
    queries, candidates, bridge, _ = planted_pairs
    options = CalibrateOptions(folds=4, trials=60, temperatures=(1.0, 0.25, 0.0625))
    fit = fit_calibration(queries, candidates, bridge, options)
    assert fit.grid[fit.chosen] == Calibration(0.25, 0.25, "candidates")
    assert all(fit.grid[c] == Calibration(0.25, 0.25, "candidates") for c in fit.fold_choices)
    likelihood, recall = fit.held_out("log_likelihood"), fit.held_out("recall@1")
    assert likelihood["difference"].low > 0  # better than the paper's, beyond the interval
    assert recall["chosen"].mean > recall["paper"].mean and fit.beats_paper
    assert fit.stored == Calibration(0.25, 0.25, "candidates")


def test_selecting_by_recall_measures_the_same_grid(planted_pairs):
    queries, candidates, bridge, _ = planted_pairs
    options = CalibrateOptions(
        folds=2, trials=20, temperatures=(1.0, 0.25), same_temperature=True, select="recall@1"
    )
    fit = fit_calibration(queries, candidates, bridge, options)
    assert fit.select == "recall@1"
    assert [c.query_temperature for c in fit.grid] == [1.0, 0.25, 1.0, 0.25]
    assert fit.grid[0] == Calibration()  # the paper's estimator is always first, once
    assert len(set(fit.grid)) == len(fit.grid)


def test_each_fold_is_judged_by_what_the_other_folds_chose():
    # Calibration 1 is best on fold 0 alone, calibration 2 on folds 1 and 2 (and overall).
    table = np.array([[0.5, 0.5, 0.5], [0.9, 0.1, 0.1], [0.2, 0.9, 0.9]])
    for_fold, overall = cross_validated_choices(table)
    assert for_fold == [2, 2, 2]  # fold 0 never sees its own column, where 1 wins
    assert overall == 2
    tie = np.array([[0.5, 0.5], [0.5, 0.5]])
    assert cross_validated_choices(tie) == ([0, 0], 0)  # ties go to the paper's estimator


def test_folds_are_disjoint_seeded_and_trials_stay_inside_their_fold():
    options = CalibrateOptions(folds=3, trials=7, candidates=4, seed=5)
    folds = fold_trials(30, options)
    members = [set(np.unique(trials)) for trials in folds]
    assert all(a.isdisjoint(b) for i, a in enumerate(members) for b in members[i + 1 :])
    assert all(trials.shape == (7, 4) for trials in folds)
    assert all(len(set(row)) == 4 for trials in folds for row in trials)
    again = fold_trials(30, options)
    assert all(np.array_equal(a, b) for a, b in zip(folds, again, strict=True))
    with pytest.raises(UsageError, match="folds of 3 items, but a trial needs 4"):
        fold_trials(10, options)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("folds", 1, "at least 2 folds"),
        ("temperatures", (0.5, 0.0), "positive"),
        ("normalizations", ("some",), "normalizations must be among"),
        ("select", "recall@5", "select must be one of"),
        ("ks", (5, 10), "must include 1"),
    ],
)
def test_options_are_checked(field, value, message):
    with pytest.raises(UsageError, match=message):
        CalibrateOptions(**{field: value})


# --- through the CLI, with the planted backend ----------------------------------------------


@pytest.fixture
def planted_bank(plugin, runner, tmp_path) -> str:
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(PLANTED_BANK) + "\n")
    models = ["--image-text-model", IMAGE_TEXT, "--text-audio-model", TEXT_AUDIO]
    result = runner.invoke(app, ["index", str(corpus), "--bank", "planted", *models])
    assert result.exit_code == 0, result.output
    return "planted"


def calibrate(runner, manifest: Path, *args):
    small = ["--folds", "2", "--trials", "4", "--candidates", "3", "--temperatures", "1,0.5"]
    return runner.invoke(app, ["calibrate", str(manifest), "--device", "cpu", *small, *args])


def query(runner, media: Path, *args):
    image = media / "images" / "concept1.png"
    return runner.invoke(
        app,
        ["query", str(image), "--candidates", str(media / "audio"), "--format", "jsonl", *args],
    )


def scores(result) -> list[float]:
    return [json.loads(line)["score"] for line in result.stdout.splitlines()]


def test_calibrate_prints_held_out_numbers_and_stores_what_won(planted_bank, runner, tmp_path):
    manifest = concept_manifest(tmp_path / "data", range(6))
    result = calibrate(runner, manifest, "--bank", planted_bank, "--out", tmp_path / "fit.json")
    assert result.exit_code == 0, result.output
    assert "held out: each fold scored with what the other folds chose" in result.stdout
    record = json.loads((tmp_path / "fit.json").read_text())
    assert record["format"] == "ucl-calibrate/1"
    assert len(record["folds"]) == 2 and len(record["grid"]) == 2 * 4  # (1, 1, none) once
    assert record["manifest"]["sha256"] and record["bank"]["content"].startswith("sha256:")
    # The planted concepts are perfectly separable: the paper's estimator already recalls every
    # item, so nothing beats it and it is what the bank keeps.
    assert record["held_out"]["recall@1"]["paper"]["mean"] == 1.0
    assert not record["beats_paper"]
    assert record["stored"] == {"temperature": [1.0, 1.0], "normalize": "none"}
    assert "the paper's estimator stays" in result.stderr
    bank_dir = Path(record["bank"]["path"])
    stored = read_calibrations(bank_dir)["image->audio"]
    assert stored.pairs["sha256"] == record["manifest"]["sha256"]
    assert stored.held_out["recall@1"]["paper"] == 1.0


def test_dry_run_stores_nothing(planted_bank, runner, tmp_path):
    manifest = concept_manifest(tmp_path / "data", range(6))
    result = calibrate(runner, manifest, "--bank", planted_bank, "--dry-run")
    assert result.exit_code == 0, result.output
    assert "nothing stored (--dry-run)" in result.stderr
    assert not (resolve_bank(planted_bank) / CALIBRATION_FILE).exists()


def test_pairs_whose_captions_are_bank_texts_are_refused(planted_bank, runner, tmp_path):
    manifest = concept_manifest(tmp_path / "data", range(6), captions={2: "  Concept   2 "})
    result = calibrate(runner, manifest, "--bank", planted_bank)
    assert result.exit_code == 2
    assert "1 bank texts are captions of" in result.output
    assert "row 2 'concept 2' (line 4)" in result.output
    assert not (resolve_bank(planted_bank) / CALIBRATION_FILE).exists()


def test_too_few_pairs_for_the_folds_is_a_usage_error_before_embedding(
    planted_bank, runner, tmp_path
):
    manifest = concept_manifest(tmp_path / "data", range(6))
    result = calibrate(runner, manifest, "--bank", planted_bank, "--folds", "3")
    assert result.exit_code == 2
    assert "folds of 2 items, but a trial needs 3" in result.output


def _store(bank_name: str, calibration: Calibration, manifest_sha: str = "0" * 64):
    """A stored entry as `ucl calibrate` would write it, for the bank as it is now."""
    from ucl_cli.bank import load_bank, resolve_bank
    from ucl_cli.bank.calibrations import StoredCalibration, content_fingerprint

    with load_bank(resolve_bank(bank_name)) as bank:
        image_text, text_audio = bank.models
        entry = StoredCalibration(
            direction="image->audio",
            calibration=calibration,
            query_model=image_text,
            candidate_model=text_audio,
            bank_rows=len(bank),
            bank_content=content_fingerprint(bank.manifest),
            pairs={"path": "/data/pairs.csv", "sha256": manifest_sha, "items": 6},
            held_out={"recall@1": {"chosen": 0.75, "paper": 0.5}},
        )
        return store_calibration(bank.path, entry)


def test_query_uses_the_stored_calibration_and_says_so_once(
    planted_bank, runner, media_dir, tmp_path
):
    stored = Calibration(0.5, 0.25, "candidates")
    _store(planted_bank, stored)
    used = query(runner, media_dir, "--bank", planted_bank)
    assert used.exit_code == 0, used.output
    said = (
        "calibration stored in bank planted for image->audio: temperature 0.5,0.25, self-normalised"
    )
    assert used.stderr.count(said) == 1
    assert "held-out recall@1 0.750 vs 0.500 for the paper's estimator, on pairs.csv" in used.stderr
    flags = query(
        runner,
        media_dir,
        "--bank",
        planted_bank,
        "--temperature",
        "0.5,0.25",
        "--normalize",
        "candidates",
    )
    assert scores(used) == scores(flags)
    assert "calibration stored in bank" not in flags.stderr  # flags win, nothing to say
    rows = [json.loads(line) for line in used.stdout.splitlines()]
    assert rows[0]["temperature"] == [0.5, 0.25] and rows[0]["normalize"] == "candidates"

    paper = query(runner, media_dir, "--bank", planted_bank, "--no-calibration")
    explicit_paper = query(runner, media_dir, "--bank", planted_bank, "--temperature", "1")
    assert paper.exit_code == 0 and "calibration stored in bank" not in paper.stderr
    assert scores(paper) == scores(explicit_paper) != scores(used)

    caption = query(runner, media_dir, "--bank", planted_bank, "--method", "caption")
    assert caption.exit_code == 0, caption.output  # a method without a bank sum: not applied
    assert "calibration stored in bank" not in caption.stderr


def test_a_changed_bank_or_a_damaged_file_falls_back_to_the_papers_estimator(
    planted_bank, runner, media_dir, tmp_path
):
    path = _store(planted_bank, Calibration(0.5, 0.5, "candidates"))
    paper = scores(query(runner, media_dir, "--bank", planted_bank, "--no-calibration"))

    path.write_text("{not json")
    damaged = query(runner, media_dir, "--bank", planted_bank)
    assert damaged.exit_code == 0, damaged.output
    assert "calibration.json is damaged" in damaged.stderr
    assert "using the paper's estimator" in damaged.stderr
    assert scores(damaged) == paper

    _store(planted_bank, Calibration(0.5, 0.5, "candidates"))
    more = tmp_path / "more.txt"
    more.write_text("yet another text\n")
    models = ["--image-text-model", IMAGE_TEXT, "--text-audio-model", TEXT_AUDIO]
    grown = runner.invoke(app, ["index", str(more), "--bank", planted_bank, *models])
    assert grown.exit_code == 0, grown.output
    assert path.exists()  # ucl index leaves the calibration file in place
    stale = query(runner, media_dir, "--bank", planted_bank)
    assert "was fit on its earlier 10 rows and the bank has changed since" in stale.stderr
    assert scores(stale) == scores(
        query(runner, media_dir, "--bank", planted_bank, "--no-calibration")
    )


def test_a_calibration_fit_with_other_models_is_not_applied(planted_bank, plugin, tmp_path):
    from ucl_cli.bank import load_bank, resolve_bank
    from ucl_cli.encoders.registry import load_encoder

    _store(planted_bank, Calibration(0.5, 0.5, "candidates"))
    image_text, text_audio = load_encoder(IMAGE_TEXT), load_encoder(TEXT_AUDIO)
    with load_bank(resolve_bank(planted_bank)) as bank:
        assert applicable_calibration(bank, "image->audio", image_text, text_audio).stored
        assert applicable_calibration(bank, "audio->image", text_audio, image_text).stored is None
        text_audio.logit_scale *= 2  # a temperature multiplies the scale it was fit on
        found = applicable_calibration(bank, "image->audio", image_text, text_audio)
    assert found.stored is None
    assert "fit with the candidate model planted:text-audio" in found.note


def test_eval_uses_it_and_warns_when_it_was_chosen_on_the_same_pairs(
    planted_bank, runner, tmp_path
):
    from ucl_cli.evaluation import read_pairs

    manifest = concept_manifest(tmp_path / "data", range(6))
    _store(planted_bank, Calibration(0.5, 0.5, "candidates"), read_pairs(manifest).sha256)
    out = tmp_path / "report.json"
    common = ["eval", str(manifest), "--bank", planted_bank, "--trials", "3", "--candidates", "6"]
    result = runner.invoke(app, [*common, "-m", "lse", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (
        "calibration stored in bank planted for image->audio: temperature 0.5, self"
        in result.stderr
    )
    assert "chosen on these same pairs" in result.stderr
    calibration = json.loads(out.read_text())["options"]["scoring"]["calibration"]
    assert calibration["temperature"] == [0.5, 0.5] and calibration["normalize"] == "candidates"

    ignored = runner.invoke(app, [*common, "-m", "lse", "--no-calibration", "--out", str(out)])
    assert "calibration stored in bank" not in ignored.stderr
    assert json.loads(out.read_text())["options"]["scoring"]["calibration"]["paper"]
    caption_only = runner.invoke(app, [*common, "-m", "caption"])
    assert caption_only.exit_code == 0, caption_only.output
    assert "calibration stored in bank" not in caption_only.stderr


# --- without labels: pseudo-pairs of bank texts -----------------------------------------------


def test_pseudo_pair_rows_are_left_out_of_the_bridge_they_are_ranked_through(
    planted_pairs, monkeypatch
):
    from ucl_cli.evaluation import cross_validation as calibrate_module
    from ucl_cli.evaluation.cross_validation import calibrate_label_free, pseudo_pair_rows

    taken, rest = pseudo_pair_rows(50, 20, seed=3)
    assert len(taken) == 20 and np.array_equal(np.union1d(taken, rest), np.arange(50))
    assert np.intersect1d(taken, rest).size == 0

    bank_rows_seen = []
    real_of = calibrate_module.Bridge.of

    def spy(bank, query_model, candidate_model, rows=None):
        bank_rows_seen.append(rows)
        return real_of(bank, query_model, candidate_model, rows)

    monkeypatch.setattr(calibrate_module.Bridge, "of", staticmethod(spy))
    from ucl_cli.bank import load_bank

    models = [
        VectorEncoder("v:image-text", ("image", "text")),
        VectorEncoder("v:text-audio", ("text", "audio")),
    ]
    with load_bank(bridge_bank_path(planted_pairs)) as bank:
        options = CalibrateOptions(folds=2, trials=5, candidates=5, temperatures=(1.0, 0.5))
        report = calibrate_label_free(encoders=models, bank=bank, pseudo_pairs=40, options=options)
    taken, rest = pseudo_pair_rows(BANK_ROWS, 40, seed=0)
    assert len(bank_rows_seen) == 1 and np.array_equal(bank_rows_seen[0], rest)
    assert report.source() == {"pseudo_pairs": 40, "seed": 0, "items": 40}
    assert report.entry().pairs["pseudo_pairs"] == 40
    assert "40 pseudo-pairs of bank texts (no labels)" in report.entry().evidence()


def bridge_bank_path(planted) -> Path:
    return planted[3]


def test_calibrate_with_pseudo_pairs_needs_no_manifest(planted_bank, runner, tmp_path):
    args = ["--folds", "2", "--trials", "3", "--candidates", "2", "--temperatures", "1,0.5"]
    result = runner.invoke(
        app,
        [
            "calibrate",
            "--pseudo-pairs",
            "4",
            "--bank",
            planted_bank,
            *args,
            "--out",
            str(tmp_path / "f.json"),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "4 pseudo-pairs of bank texts in 2 folds" in result.stdout
    record = json.loads((tmp_path / "f.json").read_text())
    assert record["pairs"] == {"pseudo_pairs": 4, "seed": 0, "items": 4}
    assert read_calibrations(resolve_bank(planted_bank))["image->audio"].pairs["pseudo_pairs"] == 4

    neither = runner.invoke(app, ["calibrate", "--bank", planted_bank])
    assert neither.exit_code == 2 and "MANIFEST of paired files or --pseudo-pairs" in neither.output
    too_many = runner.invoke(app, ["calibrate", "--pseudo-pairs", "10", "--bank", planted_bank])
    assert too_many.exit_code == 2 and "leaves no bridge" in too_many.output
