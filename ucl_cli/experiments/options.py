"""What one `ucl synth` run does: the recipe, its presets, and their checks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from ucl_cli.errors import UsageError
from ucl_cli.experiments.published import CRITIC_ORDER
from ucl_cli.experiments.training import TrainingOptions


@dataclass(frozen=True)
class SynthOptions:
    """The synthetic experiment; the defaults are the paper's recipe
    (docs/METHOD.md#the-synthetic-evidence).

    bank_sizes are the Monte Carlo columns of the main table; sweep_sizes the extra bank sizes of
    the bank-size sweep. Every size is a prefix of one bank of independent B samples, drawn
    apart from the evaluated triplets. eval_dtype is the precision of the bridge sums: float64,
    because the learned dot and -1/2||x-y||^2 critics span hundreds of nats across a bank, where
    float32 sums need the slow exact fallback for many entries (docs/REPRODUCTION.md).
    calibrated: also measure the independent family's bridge with every tempered and
    self-normalised calibration of `calibration_rules.GRID`, for the rows that pick one.
    """

    seeds: tuple[int, ...] = tuple(range(10))
    critics: tuple[str, ...] = CRITIC_ORDER
    rho: float = 0.0
    bank_sizes: tuple[int, ...] = (5_000, 100_000)
    sweep_sizes: tuple[int, ...] = (100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)
    train_size: int = 20_000
    val_size: int = 1_000
    group_size: int = 32
    dims: tuple[int, int, int] = (32, 16, 32)
    noise_std: float = 2.0
    training: TrainingOptions = field(default_factory=TrainingOptions)
    exact_references: bool = True
    ess: bool = True
    eval_dtype: str = "float64"
    calibrated: bool = False

    @property
    def all_bank_sizes(self) -> tuple[int, ...]:
        """Every bank size evaluated, ascending (the table's and the sweep's)."""
        return tuple(sorted(set(self.bank_sizes) | set(self.sweep_sizes)))

    def validate(self) -> SynthOptions:
        """Raise UsageError on anything that cannot run; return self for chaining."""
        if not self.seeds:
            raise UsageError("no seeds to run")
        if any(seed < 0 for seed in self.seeds):
            raise UsageError(f"seeds must be non-negative; got {list(self.seeds)}")
        unknown = [critic for critic in self.critics if critic not in CRITIC_ORDER]
        if unknown or not self.critics:
            raise UsageError(
                f"unknown critic {unknown[0] if unknown else '(none)'}; choose from: "
                + ", ".join(CRITIC_ORDER)
            )
        if not 0.0 <= self.rho <= 1.0:
            raise UsageError(f"--rho must lie in [0, 1]; got {self.rho}")
        if not self.bank_sizes or min(self.all_bank_sizes) < 1:
            raise UsageError(f"bank sizes must be positive; got {list(self.all_bank_sizes)}")
        if self.val_size < self.group_size:
            raise UsageError(
                f"{self.val_size} held-out triplets cannot fill one group of {self.group_size}"
            )
        if self.train_size < self.training.batch_size:
            raise UsageError(
                f"{self.train_size} training rows per pair cannot fill one batch of "
                f"{self.training.batch_size}"
            )
        if self.eval_dtype not in ("float32", "float64"):
            raise UsageError(f"eval_dtype must be float32 or float64; got {self.eval_dtype!r}")
        return self


PRESETS: dict[str, SynthOptions] = {
    # The full recipe of the paper's corrected table: 10 seeds, 20k pairs, 64 epochs, M to 100k.
    "paper": SynthOptions(),
    # A first look in about half a minute of two cores: one seed, a fifth of the data, a third
    # of the epochs, banks to 10k. The paper's qualitative findings already show.
    "quick": SynthOptions(
        seeds=(0,),
        bank_sizes=(1_000, 10_000),
        sweep_sizes=(100, 300, 1_000, 3_000, 10_000),
        train_size=4_096,
        training=TrainingOptions(epochs=20, lr_step=18),
    ),
}


def preset(name: str) -> SynthOptions:
    try:
        return PRESETS[name]
    except KeyError:
        known = ", ".join(sorted(PRESETS))
        raise UsageError(f"unknown preset {name!r}; choose one of: {known}") from None


def with_overrides(options: SynthOptions, **changes: object) -> SynthOptions:
    """options with the non-None entries of `changes` replaced, validated."""
    given = {key: value for key, value in changes.items() if value is not None}
    return dataclasses.replace(options, **given).validate()
