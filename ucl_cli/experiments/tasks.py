"""The units of work of a synthetic run, each a pure function of (options, seed[, critic]).

A run is a list of tasks: for each seed, one task per critic (train the three families, then
evaluate them) and one task for the exact references. Tasks share nothing but their inputs, so
they can run in any order and in any process and still give the same numbers: every random
draw comes from a generator seeded by the experiment seed and the purpose of the draw.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from ucl_cli.estimators import get_critic
from ucl_cli.experiments.calibration_rules import GRID, GridScores, measure_grid
from ucl_cli.experiments.evaluation import (
    BankSweep,
    GroupTerms,
    bank_sweep,
    direct_recall,
    group_count,
    grouped_recall,
)
from ucl_cli.experiments.exact_references import true_ratios
from ucl_cli.experiments.families import FAMILIES, INDEPENDENT, FamilySpec
from ucl_cli.experiments.gaussian_data import (
    GaussianWorld,
    Triplets,
    random_world,
    sample_bridge_bank,
    sample_triplets,
)
from ucl_cli.experiments.options import SynthOptions
from ucl_cli.experiments.training import TrainedFamilies, train_families

# (work units done within the task, what is running) -> None
TaskReport = Callable[[float, str], None]

EVAL_UNITS = 6.0  # progress units of one critic task's evaluation (its training: one per epoch)
REFERENCE_UNITS = 4.0


@dataclass(frozen=True)
class SeedData:
    """Everything drawn for one seed: the world, training pairs, held-out triplets, the bank."""

    world: GaussianWorld
    train: Triplets  # 2 * train_size rows: block 0 then block 1
    val: Triplets
    bank: np.ndarray  # [largest bank size, dim_b] independent B samples


@dataclass(frozen=True)
class FamilyResult:
    direct: float
    sweep: BankSweep | None  # None for the oracle, which has no bridge
    logit_scales: dict[str, float]  # "A-B" -> trained scale
    # calibration name -> its numbers, for the independent family of a --calibrated run
    calibrations: dict[str, GridScores] | None = None


@dataclass(frozen=True)
class CriticRun:
    seed: int
    critic: str
    families: dict[str, FamilyResult]
    final_loss: float
    train_seconds: float
    eval_seconds: float
    cpu_seconds: float  # CPU time of the task's process: its cost on an idle core


@dataclass(frozen=True)
class ReferenceRun:
    seed: int
    bayes: float
    lemma1: BankSweep
    seconds: float
    cpu_seconds: float


def critic_task_units(options: SynthOptions) -> float:
    """Training epochs, evaluation, and one unit per calibration of the grid when asked for."""
    return options.training.epochs + EVAL_UNITS + (len(GRID) if options.calibrated else 0)


def seed_data(options: SynthOptions, seed: int) -> SeedData:
    """The seed's draws. The world does not depend on rho, and the held-out set and the bank do
    not depend on the training size, so runs that differ only in those stay comparable."""
    world = random_world(
        np.random.default_rng([seed, 0]), options.dims, options.noise_std, options.rho
    )
    train = sample_triplets(world, 2 * options.train_size, np.random.default_rng([seed, 1]))
    val = sample_triplets(world, options.val_size, np.random.default_rng([seed, 2]))
    bank = sample_bridge_bank(world, max(options.all_bank_sizes), np.random.default_rng([seed, 3]))
    return SeedData(world, train, val, bank)


def run_critic(
    options: SynthOptions, seed: int, critic: str, report: TaskReport | None = None
) -> CriticRun:
    """Train the shared, independent and oracle models for one critic and evaluate them."""
    report = report or _ignore
    start, cpu_start = time.perf_counter(), time.process_time()
    data = seed_data(options, seed)

    def on_epoch(done: int, total: int) -> None:
        report(float(done), f"seed {seed} {critic}: epoch {done}/{total}")

    trained = train_families(FAMILIES, critic, data.train, options.training, seed, on_epoch)
    trained_at = time.perf_counter()
    dtype = getattr(torch, options.eval_dtype)
    results = {}
    for index, family in enumerate(FAMILIES):
        report(options.training.epochs + index, f"seed {seed} {critic}: evaluating {family.name}")
        results[family.name] = _evaluate_family(trained, family, data, options, dtype)
    if options.calibrated:
        base = options.training.epochs + EVAL_UNITS

        def on_step(done: int, total: int) -> None:
            report(base + done, f"seed {seed} {critic}: calibrated scores {done}/{total}")

        report(base, f"seed {seed} {critic}: calibrated scores 0/{len(GRID)}")
        grid = calibration_grid(trained, INDEPENDENT, data, options, dtype, seed, on_step)
        results[INDEPENDENT.name] = dataclasses.replace(
            results[INDEPENDENT.name], calibrations=grid
        )
    report(critic_task_units(options), f"seed {seed} {critic}: done")
    return CriticRun(
        seed,
        critic,
        results,
        trained.final_loss,
        trained_at - start,
        time.perf_counter() - trained_at,
        time.process_time() - cpu_start,
    )


def run_references(
    options: SynthOptions, seed: int, report: TaskReport | None = None
) -> ReferenceRun:
    """Bayes-optimal recall and Lemma 1 with the exact density ratios, on the same draws."""
    report = report or _ignore
    start, cpu_start = time.perf_counter(), time.process_time()
    report(0.0, f"seed {seed}: exact references")
    data = seed_data(options, seed)
    ratios = true_ratios(data.world)
    a, c = torch.from_numpy(data.val.a), torch.from_numpy(data.val.c)
    bank = torch.from_numpy(data.bank)
    size = options.group_size
    groups = group_count(len(data.val), size)

    def bayes_group(g: int) -> torch.Tensor:
        return ratios.a_to_c(a[g * size : (g + 1) * size], c[g * size : (g + 1) * size])

    bayes = grouped_recall(torch.stack([bayes_group(g) for g in range(groups)]))
    report(1.0, f"seed {seed}: Lemma 1 with exact ratios")

    def terms(g: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(g * size, (g + 1) * size)
        return ratios.a_to_b(a[rows], bank), ratios.b_to_c(bank, c[rows])

    lemma1 = bank_sweep(terms, groups, options.all_bank_sizes, ess=options.ess)
    report(REFERENCE_UNITS, f"seed {seed}: references done")
    return ReferenceRun(
        seed, bayes, lemma1, time.perf_counter() - start, time.process_time() - cpu_start
    )


def _evaluate_family(
    trained: TrainedFamilies,
    family: FamilySpec,
    data: SeedData,
    options: SynthOptions,
    dtype: torch.dtype,
) -> FamilyResult:
    name, critic = family.name, trained.critic
    phi_a = trained.embed(name, "A", torch.from_numpy(data.val.a)).to(dtype)
    phi_c = trained.embed(name, "C", torch.from_numpy(data.val.c)).to(dtype)
    scales = {f"{p.left}-{p.right}": trained.scale(name, p.left, p.right) for p in family.pairs}
    direct = direct_recall(phi_a, phi_c, critic, options.group_size)
    if family.bridge is None:
        return FamilyResult(direct, None, scales)
    terms, groups = bridge_terms(trained, family, data, options, dtype)
    sweep = bank_sweep(terms, groups, options.all_bank_sizes, ess=options.ess)
    return FamilyResult(direct, sweep, scales)


def calibration_grid(
    trained: TrainedFamilies,
    family: FamilySpec,
    data: SeedData,
    options: SynthOptions,
    dtype: torch.dtype,
    seed: int,
    on_step: Callable[[int, int], None] | None = None,
) -> dict[str, GridScores]:
    """Every calibration of `calibration_rules.GRID` on the family's labelled held-out groups
    and on its label-free pseudo-pairs, at every bank size of the run."""
    terms, groups = bridge_terms(trained, family, data, options, dtype)
    pseudo, pseudo_groups = pseudo_pair_terms(trained, family, data, options, dtype, seed)
    sizes = options.all_bank_sizes
    return measure_grid(terms, groups, pseudo, pseudo_groups, sizes, options.ess, on_step)


def bridge_terms(
    trained: TrainedFamilies,
    family: FamilySpec,
    data: SeedData,
    options: SynthOptions,
    dtype: torch.dtype,
) -> tuple[GroupTerms, int]:
    """(group -> the scaled critics (left [Q, M], right [M, Q]) of its held-out triplets against
    the seed's bank, number of groups) for a family with a bridge: what any bridge estimator
    of the family is computed from."""
    name = family.name
    queries = trained.embed(name, "A", torch.from_numpy(data.val.a)).to(dtype)
    candidates = trained.embed(name, "C", torch.from_numpy(data.val.c)).to(dtype)
    return _group_terms(trained, family, data, options, dtype, queries, candidates)


def pseudo_pair_terms(
    trained: TrainedFamilies,
    family: FamilySpec,
    data: SeedData,
    options: SynthOptions,
    dtype: torch.dtype,
    seed: int,
) -> tuple[GroupTerms, int]:
    """Like `bridge_terms`, with no labels: the queries and candidates are fresh B samples
    (drawn apart from the bank), each embedded by the A-B model's B tower as the query and by
    the B-C model's B tower as its own candidate. This is what a user without paired data has:
    the bank's kind of item (texts) through both models' text towers. Choosing a calibration by
    the recall of these pseudo-pairs is a label-free rule."""
    count = group_count(options.val_size, options.group_size) * options.group_size
    rng = np.random.default_rng([seed, 4])
    fresh = torch.from_numpy(sample_bridge_bank(data.world, count, rng))
    queries = trained.embed(family.name, family.bridge[0], fresh).to(dtype)
    candidates = trained.embed(family.name, family.bridge[1], fresh).to(dtype)
    return _group_terms(trained, family, data, options, dtype, queries, candidates)


def _group_terms(
    trained: TrainedFamilies,
    family: FamilySpec,
    data: SeedData,
    options: SynthOptions,
    dtype: torch.dtype,
    queries: torch.Tensor,
    candidates: torch.Tensor,
) -> tuple[GroupTerms, int]:
    """Groups of `group_size` (query, its own candidate) rows, scored against the seed's bank."""
    name = family.name
    bank = torch.from_numpy(data.bank)
    bank_left = trained.embed(name, family.bridge[0], bank).to(dtype)
    bank_right = trained.embed(name, family.bridge[1], bank).to(dtype)
    left_pair, right_pair = family.pairs
    scale_left = trained.scale(name, left_pair.left, left_pair.right)
    scale_right = trained.scale(name, right_pair.left, right_pair.right)
    score = get_critic(trained.critic)
    size = options.group_size

    def terms(g: int) -> tuple[torch.Tensor, torch.Tensor]:
        rows = slice(g * size, (g + 1) * size)
        left = score(queries[rows], bank_left, scale_left)
        return left, score(bank_right, candidates[rows], scale_right)

    return terms, group_count(queries.shape[0], size)


def _ignore(_units: float, _message: str) -> None:
    return None
