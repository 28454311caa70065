"""The synthetic experiments (`ucl synth`): data model, exact references, batched training,
bank-size sweep, determinism, and the quick preset end to end with the paper's findings."""

from __future__ import annotations

import dataclasses
import itertools
import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal
from typer.testing import CliRunner

from ucl_cli.cli import app
from ucl_cli.errors import UsageError
from ucl_cli.experiments.evaluation import bank_sweep
from ucl_cli.experiments.exact_references import true_ratios
from ucl_cli.experiments.families import SHARED
from ucl_cli.experiments.gaussian_data import joint_moments, random_world, sample_triplets
from ucl_cli.experiments.infonce import symmetric_infonce
from ucl_cli.experiments.options import SynthOptions
from ucl_cli.experiments.published import Published, published_value
from ucl_cli.experiments.results import load_results
from ucl_cli.experiments.runner import Resume, run_synthetic
from ucl_cli.experiments.training import (
    TrainingOptions,
    _initial_stack,
    _update_rounds,
    build_layout,
)
from ucl_cli.parsing import parse_seeds, parse_sizes

# A run small enough for a unit test: two epochs of two batches, banks of a few hundred.
TINY = SynthOptions(
    seeds=(3,),
    critics=("cosine", "dot"),
    bank_sizes=(100, 400),
    sweep_sizes=(50, 400),
    train_size=256,
    val_size=64,
    training=TrainingOptions(epochs=2, batch_size=128, lr_step=1),
)


# --- the data model and its exact references ---------------------------------------------


def test_samples_follow_the_stated_joint_gaussian():
    world = random_world(np.random.default_rng(0), rho=0.5)
    samples = sample_triplets(world, 60_000, np.random.default_rng(1))
    moments = joint_moments(world)
    a, b, c = (x.astype(np.float64) for x in (samples.a, samples.b, samples.c))
    for name, (x, y) in {"aa": (a, a), "ab": (a, b), "cb": (c, b), "ac": (a, c)}.items():
        empirical = (x - x.mean(0)).T @ (y - y.mean(0)) / len(x)
        scale = np.abs(moments.cov[name]).max()
        assert np.abs(empirical - moments.cov[name]).max() < 0.04 * scale, name
    assert np.abs(a.mean(0) - moments.mean["a"]).max() < 0.15
    assert world.dims == (32, 16, 32) and samples.a.dtype == np.float32


def test_true_log_ratios_match_scipy_densities():
    world = random_world(np.random.default_rng(2), rho=0.25)
    moments = joint_moments(world)
    ratios = true_ratios(world)
    samples = sample_triplets(world, 3, np.random.default_rng(3))
    a, c = samples.a.astype(np.float64), samples.c.astype(np.float64)
    cov, mean = moments.cov, moments.mean
    joint = multivariate_normal(
        np.concatenate([mean["a"], mean["c"]]),
        np.block([[cov["aa"], cov["ac"]], [cov["ac"].T, cov["cc"]]]),
    )
    marginal_a = multivariate_normal(mean["a"], cov["aa"])
    marginal_c = multivariate_normal(mean["c"], cov["cc"])
    got = ratios.a_to_c(torch.from_numpy(a), torch.from_numpy(c)).numpy()
    for i in range(3):
        for k in range(3):
            expected = (
                joint.logpdf(np.concatenate([a[i], c[k]]))
                - marginal_a.logpdf(a[i])
                - marginal_c.logpdf(c[k])
            )
            assert got[i, k] == pytest.approx(expected, abs=1e-8)


def test_full_bypass_makes_the_bridge_uninformative():
    world = random_world(np.random.default_rng(4), rho=1.0)
    ratios = true_ratios(world)
    samples = sample_triplets(world, 5, np.random.default_rng(5))
    left = ratios.a_to_b(torch.from_numpy(samples.a), torch.from_numpy(samples.b))
    assert torch.allclose(left, torch.zeros_like(left), atol=1e-9)


def test_bad_rho_is_refused():
    with pytest.raises(UsageError, match="rho"):
        random_world(np.random.default_rng(0), rho=1.5)


# --- training pieces ---------------------------------------------------------------------


def test_symmetric_infonce_matches_cross_entropy_and_its_gradient():
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(3, 16, 16, dtype=torch.float64, generator=generator, requires_grad=True)
    scales = torch.tensor([1.0, 30.0, 300.0], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([0.2, -1.0, 0.7], dtype=torch.float64)
    ours = symmetric_infonce(values, scales)
    logits = values * scales[:, None, None]
    labels = torch.arange(16)
    reference = torch.stack(
        [
            0.5
            * (
                torch.nn.functional.cross_entropy(logits[p], labels)
                + torch.nn.functional.cross_entropy(logits[p].T, labels)
            )
            for p in range(3)
        ]
    )
    assert torch.allclose(ours, reference, atol=1e-12)
    grads = torch.autograd.grad((ours * weights).sum(), (values, scales))
    expected = torch.autograd.grad((reference * weights).sum(), (values, scales))
    for got, want in zip(grads, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-12)


def test_encoder_stack_equals_separate_torch_modules():
    """Batched training = independent nn.Modules, including one encoder applied twice per step
    (the shared B encoder): outputs, BatchNorm running statistics and gradients agree."""
    layout = build_layout((SHARED,))
    world = random_world(np.random.default_rng(0))
    train = sample_triplets(world, 512, np.random.default_rng(1))
    stack = _initial_stack((SHARED,), layout, train, TrainingOptions(), seed=0)
    widths = [32, 16, 32]
    modules = [_as_module(stack, e, width) for e, width in enumerate(widths)]
    generator = torch.Generator().manual_seed(1)
    inputs = [torch.randn(64, widths[e], generator=generator) for e in layout.app_encoder]
    padded = torch.zeros(len(inputs), 64, 32)
    for application, x in enumerate(inputs):
        padded[application, :, : x.shape[1]] = x
    assert layout.app_encoder == [0, 1, 1, 2]

    batched = stack.forward_train(padded, torch.tensor(layout.app_encoder), _update_rounds(layout))
    separate = [modules[e](x) for e, x in zip(layout.app_encoder, inputs, strict=True)]
    for application in range(4):
        assert torch.allclose(batched[application], separate[application], atol=1e-5)
    for e, module in enumerate(modules):
        assert torch.allclose(stack.running_mean[e, 0], module[1].running_mean, atol=1e-6)
        assert torch.allclose(stack.running_var[e, 0], module[1].running_var, atol=1e-5)

    directions = [torch.randn(64, 32, generator=generator) for _ in range(4)]
    sum((batched[i] * directions[i]).sum() for i in range(4)).backward()
    sum((separate[i] * directions[i]).sum() for i in range(4)).backward()
    for e, module in enumerate(modules):
        assert torch.allclose(stack.w1.grad[e, : widths[e]], module[0].weight.grad.T, atol=1e-4)
        assert torch.allclose(stack.w2.grad[e], module[3].weight.grad.T, atol=1e-4)
        assert torch.allclose(stack.gamma.grad[e, 0], module[1].weight.grad, atol=1e-4)
        assert torch.all(stack.w1.grad[e, widths[e] :] == 0)  # padding stays untouched

    for module in modules:
        module.eval()
    probe = torch.randn(10, 16, generator=generator)
    assert torch.allclose(stack.embed(1, probe), modules[1](probe), atol=1e-5)


def _as_module(stack, encoder: int, width: int) -> torch.nn.Sequential:
    module = torch.nn.Sequential(
        torch.nn.Linear(width, 128),
        torch.nn.BatchNorm1d(128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 128),
        torch.nn.ReLU(),
        torch.nn.Linear(128, 32),
    )
    with torch.no_grad():
        module[0].weight.copy_(stack.w1[encoder, :width].T)
        module[0].bias.copy_(stack.b1[encoder, 0])
        module[3].weight.copy_(stack.w2[encoder].T)
        module[3].bias.copy_(stack.b2[encoder, 0])
        module[5].weight.copy_(stack.w3[encoder].T)
        module[5].bias.copy_(stack.b3[encoder, 0])
    return module


# --- evaluation ----------------------------------------------------------------------------


def test_bank_sweep_matches_brute_force_prefixes_and_ess():
    generator = torch.Generator().manual_seed(7)
    groups, size, bank = 3, 8, 60
    lefts = torch.randn(groups, size, bank, dtype=torch.float64, generator=generator) * 4
    rights = torch.randn(groups, bank, size, dtype=torch.float64, generator=generator) * 4
    sizes = (7, 30, 60)
    sweep = bank_sweep(lambda g: (lefts[g], rights[g]), groups, sizes)
    for s, prefix in enumerate(sizes):
        paths = lefts[:, :, :prefix, None] + rights[:, None, :prefix, :]  # [G, Q, M, Q]
        scores = paths.logsumexp(2)
        wins = (scores.diagonal(dim1=1, dim2=2)[:, :, None] > scores).sum(2) == size - 1
        assert sweep.recall[s] == pytest.approx(wins.double().mean().item())
        weights = torch.softmax(paths, dim=2)
        ess = 1.0 / (weights**2).sum(2)  # [G, Q, Q]
        positive = ess.diagonal(dim1=1, dim2=2)
        assert sweep.ess_positive[s] == pytest.approx(positive.median().item(), rel=1e-9)
        assert sweep.ess_all[s] == pytest.approx(ess.median().item(), rel=1e-9)
    assert sweep.sizes == sizes


@pytest.mark.parametrize(("t1", "t2"), [(1.0, 1.0), (0.25, 0.25), (0.1, 0.5)])
def test_bank_sweep_of_tempered_self_normalised_scores_matches_brute_force(t1, t2):
    from ucl_cli.estimators.calibrated import Calibration

    generator = torch.Generator().manual_seed(8)
    groups, size, bank = 3, 8, 60
    lefts = torch.randn(groups, size, bank, dtype=torch.float64, generator=generator) * 4
    rights = torch.randn(groups, bank, size, dtype=torch.float64, generator=generator) * 4
    rights += torch.randn(groups, 1, size, dtype=torch.float64, generator=generator) * 6
    sizes = (7, 30, 60)
    calibration = Calibration(t1, t2, "candidates")
    sweep = bank_sweep(lambda g: (lefts[g], rights[g]), groups, sizes, calibration=calibration)
    for s, prefix in enumerate(sizes):
        paths = t1 * lefts[:, :, :prefix, None] + t2 * rights[:, None, :prefix, :]
        normalizer = (t2 * rights[:, :prefix, :]).logsumexp(1)  # [G, Q]
        scores = paths.logsumexp(2) - normalizer[:, None, :]
        wins = (scores.diagonal(dim1=1, dim2=2)[:, :, None] > scores).sum(2) == size - 1
        assert sweep.recall[s] == pytest.approx(wins.double().mean().item())
        ess = 1.0 / (torch.softmax(paths, dim=2) ** 2).sum(2)
        assert sweep.ess_all[s] == pytest.approx(ess.median().item(), rel=1e-9)


def test_bank_sweep_refuses_a_bank_too_small():
    left, right = torch.zeros(4, 10), torch.zeros(10, 4)
    with pytest.raises(UsageError, match="holds only 10"):
        bank_sweep(lambda g: (left, right), 1, (5, 20))


# --- runs: determinism, options, the published table ------------------------------------


def test_a_seed_gives_the_same_numbers_in_this_process_and_in_workers():
    """Two critics in this process, then the dot critic alone in two worker processes: the dot
    models and the exact references come out identical (a critic's models depend on nothing
    but the seed, not on the process, the worker count or the other critics)."""
    here = _untimed(run_synthetic(TINY, workers=1).to_json())
    pool = _untimed(run_synthetic(dataclasses.replace(TINY, critics=("dot",)), workers=2).to_json())
    assert pool["timing"]["workers"] == 2
    assert [run for run in here["runs"] if run["critic"] == "dot"] == pool["runs"]
    assert here["reference_runs"] == pool["reference_runs"]
    assert {row["column"] for row in here["table"]} == {"direct", "mc_100", "mc_400"}
    assert here["runs"][0]["families"]["shared"]["sweep"]["sizes"] == [50, 100, 400]


def test_an_interrupted_run_resumes_where_it_stopped():
    """Every finished task is handed out as it finishes; a run resumed from the first one
    runs only the rest and ends with the same numbers as an uninterrupted run."""
    partial = []
    full = run_synthetic(TINY, workers=1, on_task_done=lambda r: partial.append(r.to_json()))
    assert [record["complete"] for record in partial] == [False, False, False]
    assert partial[0]["completed_seeds"] == [] and partial[-1]["completed_seeds"] == [3]
    saved = load_results(json.loads(json.dumps(partial[0])))  # through JSON, as on disk
    assert len(saved.critic_runs) == 1 and not saved.complete
    ran = []
    resumed = run_synthetic(
        TINY,
        workers=1,
        resume=Resume([*saved.critic_runs, *saved.reference_runs], saved.wall_seconds),
        on_progress=lambda p: ran.append(p.message),
    )
    assert not any("cosine" in message for message in ran)  # the finished task did not rerun
    assert _untimed(resumed.to_json())["runs"] == _untimed(full.to_json())["runs"]
    assert resumed.to_json()["table"] == full.to_json()["table"]
    assert resumed.wall_seconds >= saved.wall_seconds


def test_synth_resume_refuses_a_file_made_with_other_options(tmp_path):
    saved = tmp_path / "tiny.json"
    saved.write_text(json.dumps(run_synthetic(TINY, workers=1).to_json()))
    result = CliRunner().invoke(app, ["synth", "--preset", "quick", "--resume", str(saved)])
    assert result.exit_code == 2
    assert "other options" in result.output


def _untimed(record: dict) -> dict:
    """The record without its wall-clock fields, which no two runs share."""
    for run in record["runs"]:
        del run["train_seconds"], run["eval_seconds"], run["cpu_seconds"]
    for run in record["reference_runs"]:
        del run["seconds"], run["cpu_seconds"]
    return record


def test_options_are_checked_before_anything_runs():
    with pytest.raises(UsageError, match="unknown critic"):
        run_synthetic(dataclasses.replace(TINY, critics=("l1",)))
    with pytest.raises(UsageError, match="rho"):
        run_synthetic(dataclasses.replace(TINY, rho=-0.1))
    with pytest.raises(UsageError, match="one group"):
        run_synthetic(dataclasses.replace(TINY, val_size=10))


def test_seed_and_size_parsing():
    assert parse_seeds("0-3") == (0, 1, 2, 3)
    assert parse_seeds("5, 1,2-3,1") == (5, 1, 2, 3)
    assert parse_sizes("5k,100000,1.5k") == (5000, 100000, 1500)
    for bad in ("3-1", "a", "1-"):
        with pytest.raises(UsageError):
            parse_seeds(bad)
    with pytest.raises(UsageError):
        parse_sizes("lots")


def test_published_values_and_distances():
    assert published_value(0.0, "shared", "dot", "direct") == Published(0.39, 0.39)
    assert published_value(0.0, "independent", "neg_sq_l2", "mc_100000") == Published(0.88, 0.88)
    assert published_value(0.0, "reference", "lemma1", "mc_5000") == Published(0.79, 0.79)
    assert published_value(0.0, "shared", "cosine", "mc_1000") is None  # not published
    band = published_value(0.5, "shared", "dot", "mc_100000")
    assert band == Published(0.82, 0.85)
    assert band.distance(0.83) == 0.0
    assert band.distance(0.80) == pytest.approx(-0.02)
    assert band.distance(0.90) == pytest.approx(0.05)
    assert published_value(0.5, "shared", "dot", "direct") is None  # Direct: cosine, l2 only
    assert published_value(0.5, "independent", "cosine", "mc_100000") is None


# --- the command ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["--seeds", "9-2"], "cannot read seeds"),
        (["--critic", "cosine,hinge"], "unknown critic"),
        (["--rho", "1.5"], "rho"),
        (["--bank-sizes", "many"], "bank sizes"),
    ],
)
def test_synth_rejects_bad_arguments_with_exit_code_2(arguments, message):
    result = CliRunner().invoke(app, ["synth", *arguments])
    assert result.exit_code == 2
    assert message in result.output


def test_quick_preset_reproduces_the_papers_findings(tmp_path):
    """The quick preset end to end: table on stdout, JSON and figure written, and the paper's
    qualitative findings with margins (docs/METHOD.md#the-synthetic-evidence)."""
    out, figure = tmp_path / "results.json", tmp_path / "figure.png"
    result = CliRunner().invoke(
        app, ["synth", "--preset", "quick", "--out", str(out), "--plot", str(figure)]
    )
    assert result.exit_code == 0, result.output
    assert "Recall@1" in result.output and "Bank-size sweep" in result.output
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    record = json.loads(out.read_text())
    assert record["format"] == "ucl-synth/1"
    cell = {(c["family"], c["critic"], c["column"]): c["mean"] for c in record["table"]}
    small, large = "mc_1000", "mc_10000"
    chance = 1 / 32

    # A shared B encoder: Direct works with the cosine and -1/2||x-y||^2 critics (Lemmas 2, 3).
    assert cell[("shared", "cosine", "direct")] > 0.9
    assert cell[("shared", "neg_sq_l2", "direct")] > 0.9
    # The unnormalised dot critic breaks Direct; the bridge recovers (paper: 0.39 vs 0.96).
    assert cell[("shared", "dot", large)] > cell[("shared", "dot", "direct")] + 0.25
    for critic in ("cosine", "dot", "neg_sq_l2"):
        # Independent models: Direct is chance, the bridge is far above it.
        assert abs(cell[("independent", critic, "direct")] - chance) < 0.04
        assert cell[("independent", critic, large)] > 0.4
        # The oracle, trained on (A, C) pairs, is near perfect.
        assert cell[("oracle", critic, "direct")] > 0.95
        for family in ("shared", "independent"):
            assert cell[(family, critic, large)] > cell[(family, critic, small)] + 0.05
    assert cell[("reference", "bayes", "direct")] > 0.97
    # Monte Carlo improves with the bank size across the whole sweep, and the bridge weights
    # grow less degenerate (larger ESS) as the bank grows.
    for row in record["sweep"]:
        recalls = [r["mean"] for r in row["recall"]]
        assert all(b > a - 0.02 for a, b in itertools.pairwise(recalls)), row
        assert recalls[-1] > recalls[0] + 0.2
        assert row["ess_positive"][-1] >= row["ess_positive"][0] >= 1.0 - 1e-9
    assert record["timing"]["wall_seconds"] > 0
    assert not math.isnan(record["timing"]["seconds_per_seed"])
