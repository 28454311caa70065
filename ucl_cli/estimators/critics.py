"""Critics: the scaled similarity f(x, y) a contrastive model was trained with.

Shapes: x [N, D], y [M, D] -> [N, M]. `scale` is the model's trained logit scale s, so that
exp(s * f) is (up to a constant) the density ratio p(b|a)/p(b) (docs/METHOD.md#the-setting).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from ucl_cli.errors import UsageError

Critic = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]


def cosine(x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """s * cos(x, y). Inputs need not be normalised (open_clip's encoders are not)."""
    x = torch.nn.functional.normalize(x, dim=-1)
    y = torch.nn.functional.normalize(y, dim=-1)
    return scale * (x @ y.T)


def dot(x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """s * <x, y> on unnormalised embeddings; norms leak into the score
    (docs/METHOD.md#when-direct-is-valid)."""
    return scale * (x @ y.T)


def neg_sq_l2(x: torch.Tensor, y: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """s * (-1/2 ||x - y||^2), expanded as <x, y> - |x|^2/2 - |y|^2/2 (clamped to <= 0)."""
    x_sq = (x * x).sum(-1, keepdim=True)
    y_sq = (y * y).sum(-1, keepdim=True)
    half_sq_dist = (0.5 * x_sq + 0.5 * y_sq.T - x @ y.T).clamp_min(0)
    return -scale * half_sq_dist


CRITICS: dict[str, Critic] = {"cosine": cosine, "dot": dot, "neg_sq_l2": neg_sq_l2}


def get_critic(name: str) -> Critic:
    """Look a critic up by name; an unknown name lists the known ones."""
    try:
        return CRITICS[name]
    except KeyError:
        known = ", ".join(sorted(CRITICS))
        raise UsageError(f"unknown critic {name!r}; choose one of: {known}") from None
