"""The contrastive loss: critic values between two embedded batches and symmetric InfoNCE."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ucl_cli.errors import UsageError

LOG2_E = math.log2(math.e)


def pair_logits(left: torch.Tensor, right: torch.Tensor, critic: str) -> torch.Tensor:
    """Unscaled critic values [P, n, n] for embeddings left, right [P, n, D]."""
    if critic == "cosine":
        return torch.bmm(F.normalize(left, dim=-1), F.normalize(right, dim=-1).transpose(1, 2))
    if critic == "dot":
        return torch.bmm(left, right.transpose(1, 2))
    if critic == "neg_sq_l2":
        left_sq = (left * left).sum(-1, keepdim=True)
        right_sq = (right * right).sum(-1).unsqueeze(1)
        cross = torch.bmm(left, right.transpose(1, 2))
        return -(0.5 * left_sq + 0.5 * right_sq - cross).clamp_min(0)
    raise UsageError(f"unknown critic {critic!r}; choose one of: cosine, dot, neg_sq_l2")


def symmetric_infonce(critic_values: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    """[P] losses for logits scales[p] * critic_values[p] ([P, n, n], positives on the diagonal).

    Each loss is the mean of the row-wise and the column-wise cross entropy (CLIP's loss).
    """
    return _SymmetricInfoNCE.apply(critic_values, scales)


class _SymmetricInfoNCE(torch.autograd.Function):
    """Both cross entropies from one pass per direction, in base 2, with a closed-form backward.

    Autograd through two `logsumexp` calls recomputes every exponential in its backward; on CPU
    that is most of a training step. Here the forward keeps the row and column softmax numerators
    and the backward only combines them: d loss / d logits = (softmax_rows + softmax_cols) / 2n
    - I / n. exp2 is used because it is about twice as fast as exp in eager CPU PyTorch.
    """

    @staticmethod
    def forward(ctx, critic_values, scales):
        logits2 = critic_values * (scales * LOG2_E)[:, None, None]  # logits in base-2 units
        row_max = logits2.amax(2, keepdim=True)
        col_max = logits2.amax(1, keepdim=True)
        rows = torch.exp2(logits2 - row_max)
        cols = torch.exp2(logits2 - col_max)
        row_sum = rows.sum(2, keepdim=True)
        col_sum = cols.sum(1, keepdim=True)
        lse_rows = (row_max + torch.log2(row_sum)).mean((1, 2))
        lse_cols = (col_max + torch.log2(col_sum)).mean((1, 2))
        positives = logits2.diagonal(dim1=1, dim2=2).mean(1)
        ctx.save_for_backward(critic_values, scales, rows, cols, row_sum, col_sum)
        return (0.5 * (lse_rows + lse_cols) - positives) / LOG2_E

    @staticmethod
    def backward(ctx, grad_loss):
        critic_values, scales, rows, cols, row_sum, col_sum = ctx.saved_tensors
        n = critic_values.shape[1]
        grad_logits = rows.mul_(0.5 / n / row_sum)
        grad_logits.addcmul_(cols, 0.5 / n / col_sum)
        grad_logits.diagonal(dim1=1, dim2=2).sub_(1.0 / n)
        grad_logits.mul_(grad_loss[:, None, None])
        grad_scales = (grad_logits * critic_values).sum((1, 2))
        return grad_logits.mul_(scales[:, None, None]), grad_scales
