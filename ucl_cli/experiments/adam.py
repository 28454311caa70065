"""Adam, written out (see the class docstring for why)."""

from __future__ import annotations

import math

import torch


class Adam:
    """Adam exactly as `torch.optim.Adam` computes it (defaults: no weight decay, no amsgrad),
    in a handful of foreach operations.

    The first `torch.optim` step imports torch._dynamo, which costs several seconds in every
    worker process and test; this class needs nothing beyond core tensor operations.
    """

    def __init__(
        self,
        params: list[torch.nn.Parameter],
        lr: float,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
    ):
        self.params = list(params)
        self.lr = lr
        self.betas = betas
        self.eps = eps
        self.steps = 0
        self.first = [torch.zeros_like(p) for p in self.params]
        self.second = [torch.zeros_like(p) for p in self.params]

    def zero_grad(self) -> None:
        for param in self.params:
            param.grad = None

    @torch.no_grad()
    def step(self) -> None:
        beta1, beta2 = self.betas
        self.steps += 1
        grads = [param.grad for param in self.params]
        torch._foreach_lerp_(self.first, grads, 1.0 - beta1)
        torch._foreach_mul_(self.second, beta2)
        torch._foreach_addcmul_(self.second, grads, grads, 1.0 - beta2)
        step_size = self.lr / (1.0 - beta1**self.steps)
        denominator = torch._foreach_sqrt(self.second)
        torch._foreach_div_(denominator, math.sqrt(1.0 - beta2**self.steps))
        torch._foreach_add_(denominator, self.eps)
        torch._foreach_addcdiv_(self.params, self.first, denominator, -step_size)
