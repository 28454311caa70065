"""`ucl synth --calibrated`: tempered and self-normalised bridge scores beside the paper's
estimator, each picked by a stated rule; a pick made on a seed's labels is judged only on the
other seeds. The rules are checked on planted per-seed numbers, the command end to end on a
preset small enough for a unit test."""

from __future__ import annotations

import dataclasses
import io
import json
import runpy
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ucl_cli.cli import app
from ucl_cli.experiments import options as synth_options
from ucl_cli.experiments.calibration_rules import (
    GRID,
    GRID_ORDER,
    PAPER,
    SELF_NORMALISED,
    GridScores,
    best_on_labels,
    best_on_pseudo_pairs,
    labels_row,
    pseudo_pairs_row,
    smallest_t_reaching_ess,
    variant_rows,
)
from ucl_cli.experiments.evaluation import BankSweep
from ucl_cli.experiments.options import SynthOptions
from ucl_cli.experiments.report_table import calibrated_table
from ucl_cli.experiments.results import SynthResults, load_results
from ucl_cli.experiments.tasks import CriticRun, FamilyResult
from ucl_cli.experiments.training import TrainingOptions

ROOT = Path(__file__).resolve().parents[1]
SIZES = (10, 20)
NAMES = list(GRID_ORDER)

# A run small enough for a unit test (as in test_synthetic.py), two seeds, one critic.
TINY = SynthOptions(
    seeds=(3, 4),
    critics=("cosine",),
    bank_sizes=(100, 400),
    sweep_sizes=(50, 400),
    train_size=256,
    val_size=64,
    training=TrainingOptions(epochs=2, batch_size=128, lr_step=1),
)


def planted(recall=None, pseudo=None, ess=None) -> dict[str, GridScores]:
    """A seed's grid: every calibration at 0.1 (ESS 1) unless given, per bank size."""
    grid = {}
    for name in NAMES:
        grid[name] = GridScores(
            tuple((recall or {}).get(name, (0.1, 0.1))),
            tuple((ess or {}).get(name, (1.0, 1.0))),
            tuple((pseudo or {}).get(name, (0.1, 0.1))),
            tuple((ess or {}).get(name, (1.0, 1.0))),
        )
    return grid


# --- the rules, on planted numbers ----------------------------------------------------------


def test_the_grid_is_five_temperatures_without_and_with_normalisation():
    assert len(GRID) == 10 and NAMES[0] == PAPER == "t=1,none"
    assert SELF_NORMALISED == "t=1,candidates"
    assert [
        f"t={t:g},{n}" for n in ("none", "candidates") for t in (1, 0.5, 0.25, 0.1, 0.05)
    ] == NAMES


def test_label_pick_is_judged_only_on_the_other_seeds():
    chooser = planted(recall={"t=0.1,candidates": (0.9, 0.2), "t=0.25,none": (0.3, 0.95)})
    grids = {
        0: chooser,
        1: planted(recall={"t=0.1,candidates": (0.5, 0.1), "t=0.25,none": (0.1, 0.6)}),
        2: planted(recall={"t=0.1,candidates": (0.7, 0.1), "t=0.25,none": (0.1, 0.8)}),
    }
    row = labels_row(grids, SIZES, chooser=0)
    assert row.unavailable is None and row.chosen_on == (0,) and row.judged_on == (1, 2)
    assert row.picks == (("t=0.1,candidates",) * 2, ("t=0.25,none",) * 2)
    assert row.recall(grids, 0) == [0.5, 0.7] and row.recall(grids, 1) == [0.6, 0.8]

    # The chooser's own numbers never reach the row (only its choice does) ...
    louder = dict(chooser, **{"t=0.1,candidates": dataclasses.replace(
        chooser["t=0.1,candidates"], recall=(0.99, 0.2))})  # fmt: skip
    assert labels_row({**grids, 0: louder}, SIZES, chooser=0).recall(grids, 0) == [0.5, 0.7]
    # ... and the judged seeds' labels do not choose: seed 1 best elsewhere changes nothing.
    other = planted(recall={"t=1,none": (0.99, 0.99), "t=0.1,candidates": (0.5, 0.1),
                            "t=0.25,none": (0.1, 0.6)})  # fmt: skip
    again = labels_row({**grids, 1: other}, SIZES, chooser=0)
    assert again.picks == row.picks and again.recall({**grids, 1: other}, 0) == [0.5, 0.7]
    # The chooser is the seed named, wherever it is in the run.
    assert labels_row(grids, SIZES, chooser=2).judged_on == (0, 1)


def test_label_pick_with_one_seed_is_not_reported():
    row = labels_row({5: planted()}, SIZES, chooser=5)
    assert row.unavailable is not None and "one seed" in row.unavailable
    assert row.judged_on == () and row.recall({5: planted()}, 0) == []
    waiting = labels_row({5: planted()}, SIZES, chooser=5, waiting=True)
    assert "waiting" in waiting.unavailable
    assert "waiting" in labels_row({6: planted()}, SIZES, chooser=5).unavailable


def test_pseudo_pair_pick_uses_no_labels_and_each_seed_chooses_for_itself():
    grids = {
        0: planted(recall={"t=1,none": (0.9, 0.9)}, pseudo={"t=0.05,candidates": (0.8, 0.05)}),
        1: planted(pseudo={"t=0.5,none": (0.8, 0.8)}),
    }
    row = pseudo_pairs_row(grids, SIZES)
    assert row.chosen_on == () and row.judged_on == (0, 1)
    assert row.picks == (("t=0.05,candidates", "t=0.5,none"), ("t=1,none", "t=0.5,none"))
    assert row.recall(grids, 0) == [0.1, 0.1]  # label recall of the picks, not pseudo recall
    assert best_on_pseudo_pairs(grids[0], 1) == "t=1,none"  # a tie: the first of the grid


def test_self_normalised_row_and_the_order_of_rows():
    grids = {0: planted(recall={SELF_NORMALISED: (0.4, 0.6)}), 1: planted()}
    rows = variant_rows(grids, SIZES, chooser=0)
    assert [row.variant for row in rows] == ["self_normalised", "pseudo_pairs", "labels"]
    assert rows[0].picks == ((SELF_NORMALISED,) * 2,) * 2
    assert rows[0].recall(grids, 1) == [0.6, 0.1]


def test_label_best_ties_and_the_target_ess_rule():
    grid = planted(recall={"t=0.5,none": (0.3, 0.1), "t=0.25,candidates": (0.3, 0.1)})
    assert best_on_labels(grid, 0) == "t=0.5,none"
    ess = {"t=1,candidates": (1.0, 1.0), "t=0.5,candidates": (3.5, 1.0),
           "t=0.25,candidates": (9.0, 2.0), "t=0.1,candidates": (30.0, 4.0),
           "t=0.05,candidates": (90.0, 4.4)}  # fmt: skip
    grid = planted(ess=ess)
    assert smallest_t_reaching_ess(grid, 10, 0, "candidates") == "t=0.5,candidates"
    assert smallest_t_reaching_ess(grid, 20, 1, "candidates") == "t=0.05,candidates"  # none do


# --- results and the table, from planted runs ----------------------------------------------


def planted_results(seeds: tuple[int, ...]) -> SynthResults:
    options = SynthOptions(
        seeds=seeds,
        critics=("cosine",),
        bank_sizes=SIZES,
        sweep_sizes=(),
        exact_references=False,
        calibrated=True,
    )
    runs = []
    for seed in seeds:
        best = "t=0.1,candidates" if seed == seeds[0] else "t=0.25,candidates"
        grid = planted(
            recall={best: (0.5 + seed / 100, 0.6 + seed / 100), PAPER: (0.2, 0.3)},
            pseudo={"t=0.05,candidates": (0.9, 0.9)},
        )
        sweep = BankSweep(SIZES, (0.2, 0.3), (1.0, 1.0), (1.0, 1.0))
        families = {
            "shared": FamilyResult(0.5, sweep, {}),
            "independent": FamilyResult(0.03, sweep, {}, grid),
            "oracle": FamilyResult(0.99, None, {}),
        }
        runs.append(CriticRun(seed, "cosine", families, 1.0, 1.0, 1.0, 1.0))
    return SynthResults(options, runs, [], 1.0, 1)


def test_results_report_each_row_with_its_rule_and_picks_and_read_back():
    record = json.loads(json.dumps(planted_results((7, 1, 2)).to_json()))
    assert record["options"]["calibrated"] is True
    rows = {row["variant"]: row for row in record["calibrated"]["rows"]}
    assert set(rows) == {"self_normalised", "pseudo_pairs", "labels"}
    labels = rows["labels"]
    # Seed 7 (the first of --seeds) chooses t=0.1 on its labels; seeds 1 and 2 are judged,
    # where t=0.1 scores the planted 0.1 (their own best, t=0.25, is not what was picked).
    assert labels["chosen_on"] == [7] and labels["judged_on"] == [1, 2]
    assert labels["picked"] == [["t=0.1,candidates"] * 2] * 2
    assert [r["mean"] for r in labels["recall"]] == [0.1, 0.1]
    assert "seed 7" in labels["rule"]
    pseudo = rows["pseudo_pairs"]
    assert pseudo["judged_on"] == [1, 2, 7] and pseudo["chosen_on"] == []
    assert pseudo["picked"] == [["t=0.05,candidates"] * 3] * 2
    assert rows["self_normalised"]["picked"] == [[SELF_NORMALISED] * 3] * 2
    for row in rows.values():
        assert row["family"] == "independent" and row["critic"] == "cosine" and row["rule"]
        assert row["sizes"] == list(SIZES) and row["unavailable"] is None
    # A saved run reads back to the same rows.
    assert load_results(record).to_json()["calibrated"] == record["calibrated"]

    text = _render(calibrated_table(record))
    assert "picked on seed 7's labels, judged on seeds 1-2" in text
    assert "picked per seed on its pseudo-pairs (no labels)" in text
    assert "self-normalised (t=1, cand)" in text and "the paper's estimator" in text
    assert "t=0.1,cand" in text and "t=0.05,cand" in text and "t=1,none" in text


def test_one_seed_says_the_label_pick_cannot_be_reported():
    record = json.loads(json.dumps(planted_results((0,)).to_json()))
    labels = next(row for row in record["calibrated"]["rows"] if row["variant"] == "labels")
    assert labels["judged_on"] == [] and labels["picked"] == []
    assert all(r["mean"] is None for r in labels["recall"])
    assert "one seed" in labels["unavailable"]
    text = _render(calibrated_table(record))
    assert "n/a" in text and "not reported (one seed only" in " ".join(text.split())


def _render(table) -> str:
    stream = io.StringIO()
    Console(file=stream, width=200, highlight=False).print(table)
    return stream.getvalue()


# --- the command, on a tiny preset ---------------------------------------------------------


@pytest.fixture
def tiny_quick(monkeypatch):
    monkeypatch.setitem(synth_options.PRESETS, "quick", TINY)


def synth(*arguments: str) -> str:
    result = CliRunner().invoke(
        app, ["synth", "--workers", "1", *arguments], env={"COLUMNS": "200"}
    )
    assert result.exit_code == 0, result.output
    return result.stdout


def test_synth_calibrated_reports_the_variants_in_table_json_and_plot(tiny_quick, tmp_path):
    out, figure, plain = tmp_path / "run.json", tmp_path / "run.png", tmp_path / "plain.json"
    shown = synth("--calibrated", "--out", str(out), "--plot", str(figure))
    default = synth("--out", str(plain))
    record, baseline = json.loads(out.read_text()), json.loads(plain.read_text())

    assert "Tempered and self-normalised bridge scores" in shown
    assert "picked on seed 3's labels, judged on seed 4" in shown
    assert "picked per seed on its pseudo-pairs" in shown
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    grids = {
        run["seed"]: run["families"]["independent"]["calibrations"]
        for run in record["runs"]
        if run["critic"] == "cosine"
    }
    assert set(grids) == {3, 4} and all(list(grid) == NAMES for grid in grids.values())
    sizes = record["calibrated"]["rows"][0]["sizes"]
    assert sizes == [50, 100, 400]
    for row in record["calibrated"]["rows"]:
        assert row["critic"] == "cosine" and row["unavailable"] is None
        for i, (picks, summary) in enumerate(zip(row["picked"], row["recall"], strict=True)):
            assert all(pick in NAMES for pick in picks)
            # every number is the judged seed's own labelled recall under its pick
            judged = zip(row["judged_on"], picks, strict=True)
            values = [grids[s][p]["recall"][i] for s, p in judged]
            assert summary["values"] == values
        if row["variant"] == "labels":
            assert row["chosen_on"] == [3] and row["judged_on"] == [4]
            best = [max(grids[3], key=lambda n, i=i: grids[3][n]["recall"][i]) for i in range(3)]
            assert [picks[0] for picks in row["picked"]] == best
    # The paper's estimator in the grid is the paper's sweep, to the last digit.
    independent = next(r for r in record["sweep"] if r["family"] == "independent")
    assert [grids[3][PAPER]["recall"][i] for i in range(3)] == [
        r["values"][0] for r in independent["recall"]
    ]

    # Everything the paper's rows report is what a run without the flag reports.
    assert "calibrated" not in baseline and "calibrated" not in baseline["options"]
    assert "Tempered" not in default
    assert all("calibrations" not in f for r in baseline["runs"] for f in r["families"].values())
    assert record["table"] == baseline["table"] and record["sweep"] == baseline["sweep"]
    assert _paper_part(record) == _paper_part(baseline)
    assert default.split("Tempered")[0].strip() == shown.split("Tempered")[0].strip()


def test_synth_calibrated_with_one_seed_says_why_a_row_is_missing(tiny_quick, tmp_path):
    out = tmp_path / "one.json"
    shown = " ".join(synth("--calibrated", "--seeds", "3", "--out", str(out)).split())
    assert "picked on seed 3's labels" in shown and "not reported (one seed only" in shown
    rows = json.loads(out.read_text())["calibrated"]["rows"]
    assert [row["variant"] for row in rows if row["unavailable"]] == ["labels"]

    resumed = CliRunner().invoke(app, ["synth", "--seeds", "3", "--resume", str(out)])
    assert resumed.exit_code == 2 and "--calibrated" in resumed.output  # options must match


def _paper_part(record: dict) -> dict:
    """The runs without wall-clock fields and without the calibration grids."""
    runs = []
    for run in record["runs"]:
        run = {k: v for k, v in run.items() if not k.endswith("seconds")}
        run["families"] = {
            name: {k: v for k, v in fields.items() if k != "calibrations"}
            for name, fields in run["families"].items()
        }
        runs.append(run)
    return {"runs": runs, "references": [r["bayes"] for r in record["reference_runs"]]}


# --- the benchmark script reads its saved runs with the same rules -------------------------


def test_bench_calibration_report_uses_the_shared_rules(capsys):
    script = runpy.run_path(str(ROOT / "scripts" / "bench_calibration.py"))
    record = {"preset": "quick", "critic": "cosine", "sizes": list(SIZES), "torch": "x"}
    seeds = {}
    for seed, grid in {
        "0": planted(recall={"t=0.1,candidates": (0.9, 0.9)}, pseudo={"t=0.5,none": (1, 1)}),
        "1": planted(recall={"t=0.1,candidates": (0.4, 0.5)}),
    }.items():
        seeds[seed] = {
            "calibrations": {
                name: {k: v for k, v in scores.to_json().items() if k != "ess_positive"}
                for name, scores in grid.items()
            }
        }
    script["report"]({**record, "seeds": seeds})
    text = capsys.readouterr().out
    assert "| chosen on seed 0 (t=0.1,candidates; t=0.1,candidates) | 0.400 | 0.500 |" in text
    assert "seed 0: label-best t=0.1,candidates / t=0.1,candidates; pseudo-pairs t=0.5,none" in text
