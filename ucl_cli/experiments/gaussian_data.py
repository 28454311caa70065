"""The linear-Gaussian A <- B -> C world of the paper's synthetic experiments
(docs/METHOD.md#the-synthetic-evidence).

    B ~ N(mu_B, R_B^T R_B),  U ~ N(mu_U, R_U^T R_U) independent of B   (16 dims each)
    A = sqrt(1 - rho) M_A B + sqrt(rho) N_A U + eps_A                 (32 dims)
    C = sqrt(1 - rho) M_C B + sqrt(rho) N_C U + eps_C                 (32 dims)
    eps ~ N(0, sigma^2 I), sigma = 2; every entry of mu, R, M, N ~ U(-1, 1).

rho is the bypass: the share of the A-C signal that goes around B. At rho = 0, A and C are
independent given B (assumption 1); at rho = 1, B says nothing about A or C. Because everything
is jointly Gaussian, the true density ratios are known in closed form (`joint_moments`), which
gives the exact references (`ucl_cli.experiments.exact_references`).

Sampling always draws B, U and both noises, whatever rho is, so that runs at different rho share
their random draws and differ only by the mixing weights (a paired comparison).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ucl_cli.errors import UsageError


@dataclass(frozen=True)
class GaussianWorld:
    """Parameters of one random A <- B -> C world (one per seed). Arrays are float64."""

    mu_b: np.ndarray  # [dim_b]
    root_b: np.ndarray  # [dim_b, dim_b]; cov(B) = root_b.T @ root_b
    mu_u: np.ndarray  # [dim_b]
    root_u: np.ndarray  # [dim_b, dim_b]; cov(U) = root_u.T @ root_u
    mix_a: np.ndarray  # M_A [dim_a, dim_b]
    mix_c: np.ndarray  # M_C [dim_c, dim_b]
    bypass_a: np.ndarray  # N_A [dim_a, dim_b]
    bypass_c: np.ndarray  # N_C [dim_c, dim_b]
    noise_std: float
    rho: float

    @property
    def dims(self) -> tuple[int, int, int]:
        """(dim_a, dim_b, dim_c)."""
        return self.mix_a.shape[0], self.mu_b.shape[0], self.mix_c.shape[0]


@dataclass(frozen=True)
class Triplets:
    """n aligned (A, B, C) samples, float32 numpy arrays [n, dim]."""

    a: np.ndarray
    b: np.ndarray
    c: np.ndarray

    def __len__(self) -> int:
        return self.a.shape[0]


@dataclass(frozen=True)
class JointMoments:
    """Means and (cross-)covariances of the jointly Gaussian (A, B, C), float64."""

    mean: dict[str, np.ndarray]  # keys "a", "b", "c"
    cov: dict[str, np.ndarray]  # keys "aa", "bb", "cc", "ab", "cb", "ac"


def random_world(
    rng: np.random.Generator,
    dims: tuple[int, int, int] = (32, 16, 32),
    noise_std: float = 2.0,
    rho: float = 0.0,
) -> GaussianWorld:
    """Draw one world. B's parameters come first, so they do not depend on rho or on U."""
    if not 0.0 <= rho <= 1.0:
        raise UsageError(f"rho (the bypass share) must lie in [0, 1]; got {rho}")
    dim_a, dim_b, dim_c = dims
    root_b = rng.uniform(-1, 1, (dim_b, dim_b))
    mu_b = rng.uniform(-1, 1, dim_b)
    mix_a = rng.uniform(-1, 1, (dim_a, dim_b))
    mix_c = rng.uniform(-1, 1, (dim_c, dim_b))
    root_u = rng.uniform(-1, 1, (dim_b, dim_b))
    mu_u = rng.uniform(-1, 1, dim_b)
    bypass_a = rng.uniform(-1, 1, (dim_a, dim_b))
    bypass_c = rng.uniform(-1, 1, (dim_c, dim_b))
    return GaussianWorld(
        mu_b, root_b, mu_u, root_u, mix_a, mix_c, bypass_a, bypass_c, float(noise_std), float(rho)
    )


def sample_triplets(world: GaussianWorld, n: int, rng: np.random.Generator) -> Triplets:
    """n i.i.d. (A, B, C) triplets from the world."""
    dim_a, dim_b, dim_c = world.dims
    b = world.mu_b + rng.standard_normal((n, dim_b)) @ world.root_b
    u = world.mu_u + rng.standard_normal((n, dim_b)) @ world.root_u
    noise_a = world.noise_std * rng.standard_normal((n, dim_a))
    noise_c = world.noise_std * rng.standard_normal((n, dim_c))
    via_b, around_b = math.sqrt(1.0 - world.rho), math.sqrt(world.rho)
    a = via_b * b @ world.mix_a.T + around_b * u @ world.bypass_a.T + noise_a
    c = via_b * b @ world.mix_c.T + around_b * u @ world.bypass_c.T + noise_c
    return Triplets(a.astype(np.float32), b.astype(np.float32), c.astype(np.float32))


def sample_bridge_bank(world: GaussianWorld, size: int, rng: np.random.Generator) -> np.ndarray:
    """size fresh draws of B alone, float32 [size, dim_b]: a bank that never holds evaluated B."""
    b = world.mu_b + rng.standard_normal((size, world.dims[1])) @ world.root_b
    return b.astype(np.float32)


def joint_moments(world: GaussianWorld) -> JointMoments:
    """The exact Gaussian law of (A, B, C), from which every true density ratio follows."""
    via_b, around_b = math.sqrt(1.0 - world.rho), math.sqrt(world.rho)
    cov_b = world.root_b.T @ world.root_b
    cov_u = world.root_u.T @ world.root_u
    noise_var = world.noise_std**2

    def mean_of(mix: np.ndarray, bypass: np.ndarray) -> np.ndarray:
        return via_b * mix @ world.mu_b + around_b * bypass @ world.mu_u

    def cross(mix_x, bypass_x, mix_y, bypass_y) -> np.ndarray:
        return via_b**2 * mix_x @ cov_b @ mix_y.T + around_b**2 * bypass_x @ cov_u @ bypass_y.T

    dim_a, _, dim_c = world.dims
    ma, mc, na, nc = world.mix_a, world.mix_c, world.bypass_a, world.bypass_c
    return JointMoments(
        mean={"a": mean_of(ma, na), "b": world.mu_b.copy(), "c": mean_of(mc, nc)},
        cov={
            "aa": cross(ma, na, ma, na) + noise_var * np.eye(dim_a),
            "cc": cross(mc, nc, mc, nc) + noise_var * np.eye(dim_c),
            "bb": cov_b,
            "ab": via_b * ma @ cov_b,
            "cb": via_b * mc @ cov_b,
            "ac": cross(ma, na, mc, nc),
        },
    )
