"""Many small MLP encoders trained as one batched network.

The paper's encoder is Linear-BatchNorm-ReLU-Linear-ReLU-Linear (hidden 128, embedding 32). One
such MLP is far too small to keep a CPU busy: in eager PyTorch its training step is mostly
per-operation overhead. So every encoder of every model trained in one task lives in one stack of
weights [E, ...], and each training step runs all of them with batched matrix products. Models
never share parameters, and Adam is elementwise, so training them together gives the same
trajectories as training each one alone.

One encoder may be *applied* more than once per step (the shared B encoder sees an A-B batch and a
B-C batch); each application keeps its own BatchNorm batch statistics, as two separate calls of
one `nn.Module` would, and updates the running statistics in the same order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

BN_EPS = 1e-5
BN_MOMENTUM = 0.1


@dataclass(frozen=True)
class StackShape:
    """Sizes of the stacked MLPs. Inputs narrower than `input_dim` are zero-padded."""

    encoders: int
    input_dim: int
    hidden: int = 128
    embed_dim: int = 32


class _BatchNormReLU(torch.autograd.Function):
    """relu(batchnorm(h)) over dim 1 of [apps, batch, hidden], with a closed-form backward.

    Autograd's generic backward of a batch-norm built from `var_mean` costs several times more
    on CPU than this one; the forward also returns the batch mean and (biased) variance for the
    running statistics.
    """

    @staticmethod
    def forward(ctx, h, gamma, beta):
        mean = h.mean(1, keepdim=True)
        centred = h - mean
        var = (centred * centred).mean(1, keepdim=True)
        inv_std = torch.rsqrt(var + BN_EPS)
        normed = centred.mul_(inv_std)
        out = torch.relu(torch.addcmul(beta, normed, gamma))
        ctx.save_for_backward(normed, inv_std, gamma, out)
        ctx.mark_non_differentiable(mean, var)
        return out, mean, var

    @staticmethod
    def backward(ctx, grad_out, _grad_mean, _grad_var):
        normed, inv_std, gamma, out = ctx.saved_tensors
        grad_affine = grad_out * (out > 0)
        grad_beta = grad_affine.sum(1, keepdim=True)
        grad_gamma = (grad_affine * normed).sum(1, keepdim=True)
        n = normed.shape[1]
        grad_h = grad_affine - grad_beta / n - normed * (grad_gamma / n)
        grad_h.mul_(gamma * inv_std)
        return grad_h, grad_gamma, grad_beta


class EncoderStack(torch.nn.Module):
    """E independent MLP encoders with stacked parameters ([E, in, out] weights)."""

    def __init__(self, shape: StackShape, fan_in: list[int], generators: list[torch.Generator]):
        """fan_in[e]: true input width of encoder e; generators[e]: its initialisation stream.

        Initialisation follows `nn.Linear` (uniform in +-1/sqrt(fan_in) for weights and biases)
        and `nn.BatchNorm1d` (gamma 1, beta 0); padded input rows start (and stay) at zero.
        """
        super().__init__()
        e, d_in, hid, d_out = shape.encoders, shape.input_dim, shape.hidden, shape.embed_dim
        self.shape = shape
        self.w1 = torch.nn.Parameter(torch.zeros(e, d_in, hid))
        self.b1 = torch.nn.Parameter(torch.zeros(e, 1, hid))
        self.gamma = torch.nn.Parameter(torch.ones(e, 1, hid))
        self.beta = torch.nn.Parameter(torch.zeros(e, 1, hid))
        self.w2 = torch.nn.Parameter(torch.zeros(e, hid, hid))
        self.b2 = torch.nn.Parameter(torch.zeros(e, 1, hid))
        self.w3 = torch.nn.Parameter(torch.zeros(e, hid, d_out))
        self.b3 = torch.nn.Parameter(torch.zeros(e, 1, d_out))
        self.register_buffer("running_mean", torch.zeros(e, 1, hid))
        self.register_buffer("running_var", torch.ones(e, 1, hid))
        with torch.no_grad():
            for index, (width, gen) in enumerate(zip(fan_in, generators, strict=True)):
                _linear_init(self.w1[index, :width], self.b1[index], width, gen)
                _linear_init(self.w2[index], self.b2[index], hid, gen)
                _linear_init(self.w3[index], self.b3[index], hid, gen)

    def forward_train(
        self, inputs: torch.Tensor, encoder_of_app: torch.Tensor, update_rounds: list[tuple]
    ) -> torch.Tensor:
        """Embeddings [apps, batch, embed] of inputs [apps, batch, input_dim], training mode.

        encoder_of_app [apps]: which encoder each application uses. update_rounds: the running
        statistics updates in call order, as (app indices, encoder indices) with no encoder
        repeated within a round.
        """
        index = encoder_of_app
        h = torch.baddbmm(self.b1[index], inputs, self.w1[index])
        h, mean, var = _BatchNormReLU.apply(h, self.gamma[index], self.beta[index])
        h = torch.relu(torch.baddbmm(self.b2[index], h, self.w2[index]))
        out = torch.baddbmm(self.b3[index], h, self.w3[index])
        self._update_running_stats(mean, var, inputs.shape[1], update_rounds)
        return out

    @torch.no_grad()
    def embed(self, encoder: int, x: torch.Tensor) -> torch.Tensor:
        """Evaluation-mode embedding [N, embed] of x [N, width] by one encoder."""
        width = x.shape[1]
        h = torch.addmm(self.b1[encoder], x, self.w1[encoder, :width])
        inv_std = torch.rsqrt(self.running_var[encoder] + BN_EPS)
        h = (h - self.running_mean[encoder]) * (inv_std * self.gamma[encoder]) + self.beta[encoder]
        h = torch.relu(torch.addmm(self.b2[encoder], h.relu_(), self.w2[encoder]))
        return torch.addmm(self.b3[encoder], h, self.w3[encoder])

    @torch.no_grad()
    def _update_running_stats(self, mean, var, batch: int, rounds: list[tuple]) -> None:
        unbiased = var * (batch / max(batch - 1, 1))
        for apps, encoders in rounds:
            self.running_mean[encoders] = self.running_mean[encoders].lerp(mean[apps], BN_MOMENTUM)
            self.running_var[encoders] = self.running_var[encoders].lerp(
                unbiased[apps], BN_MOMENTUM
            )


def _linear_init(
    weight: torch.Tensor, bias: torch.Tensor, fan_in: int, gen: torch.Generator
) -> None:
    bound = 1.0 / math.sqrt(fan_in)
    weight.copy_(torch.empty(weight.shape).uniform_(-bound, bound, generator=gen))
    bias.copy_(torch.empty(bias.shape).uniform_(-bound, bound, generator=gen))
