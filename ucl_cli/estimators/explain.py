"""Why a candidate scored what it did: the bank items that carried the bridge sum.

For a pair (n, k) the weights w_m = softmax_m(left[n, m] + right[m, k]) say how much each bank
item contributed to the score; the effective sample size ESS = (sum w)^2 / sum w^2 = 1 / sum w^2
says how many items did the work. An ESS near 1 means one bank item decided the match, so a
larger or better-matched bank may change the answer (docs/METHOD.md#how-large-a-bank-must-be).

A pair with no finite path (every left[n, m] + right[m, k] is -inf, e.g. a masked candidate) has
no weights: its top list is all index -1 with weight 0, and its ESS is 0 (no item did any work).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ucl_cli.estimators.bridge import BLOCK_ELEMENTS

# The bank index of an empty slot in a top list (the pair has no finite path), as in FAISS.
NO_ROW = -1


@dataclass(frozen=True)
class Explanation:
    """For P pairs: the `top` heaviest bank rows, their weights, and each pair's ESS.

    bank_indices [P, top] (long), weights [P, top] (descending), effective_sample_size [P],
    and log_mass [P]: log sum_m exp(left + right), what the weights are normalised by (so that
    explanations of parts of a bank can be joined, `join_explanations`).
    A pair with no finite path has bank_indices NO_ROW (-1), weights 0, ESS 0, log_mass -inf.
    """

    bank_indices: torch.Tensor
    weights: torch.Tensor
    effective_sample_size: torch.Tensor
    log_mass: torch.Tensor | None = None


def explain_pairs(
    left: torch.Tensor,
    right: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    top: int = 5,
    *,
    block_elements: int = BLOCK_ELEMENTS,
) -> Explanation:
    """Heaviest bank rows and ESS for the pairs (rows[p], cols[p]); memory bounded by blocks.

    Two passes over the bank: the exact log normaliser per pair, then the weights chunk by chunk,
    keeping a running top list and a running sum of squared weights. Paths are taken relative
    to the row and column maxima, so that a huge common offset (a -1e30 mask on a whole
    candidate) cannot round the differences between paths away.
    """
    pairs, bank = rows.numel(), left.shape[1]
    top = min(top, bank)
    bank_block = max(1, block_elements // max(1, pairs))
    shifts = _line_shifts(left, right, rows, cols)
    log_norm = torch.full((pairs,), -math.inf, dtype=left.dtype, device=left.device)
    for _, paths in _relative_paths(left, right, rows, cols, shifts, bank_block):
        log_norm = torch.logaddexp(log_norm, torch.logsumexp(paths, dim=1))
    no_path = torch.isneginf(log_norm)
    log_norm = torch.where(no_path, torch.zeros_like(log_norm), log_norm)  # weights exp(-inf)

    best_weights = torch.full((pairs, 0), 0.0, dtype=left.dtype, device=left.device)
    best_indices = torch.zeros((pairs, 0), dtype=torch.long, device=left.device)
    squared_sum = torch.zeros(pairs, dtype=left.dtype, device=left.device)
    for m0, paths in _relative_paths(left, right, rows, cols, shifts, bank_block):
        weights = (paths - log_norm[:, None]).exp()
        squared_sum += (weights * weights).sum(dim=1)
        chunk_best, chunk_index = weights.topk(min(top, weights.shape[1]), dim=1)
        merged_weights = torch.cat([best_weights, chunk_best], dim=1)
        merged_indices = torch.cat([best_indices, chunk_index + m0], dim=1)
        best_weights, keep = merged_weights.topk(min(top, merged_weights.shape[1]), dim=1)
        best_indices = merged_indices.gather(1, keep)
    best_indices = best_indices.masked_fill(no_path[:, None], NO_ROW)
    ess = torch.where(no_path, torch.zeros_like(squared_sum), 1.0 / squared_sum)
    row_shift, col_shift = shifts
    log_mass = torch.where(no_path, -math.inf, log_norm + row_shift[:, 0] + col_shift[:, 0])
    return Explanation(best_indices, best_weights, ess, log_mass)


def join_explanations(parts: list[Explanation], top: int) -> Explanation:
    """One explanation from explanations of disjoint parts of a bank (their bank_indices
    already numbered in the whole bank): the whole bank's mass is the parts' logaddexp, each
    part's weights are rescaled by its share of it, the heaviest `top` kept, and the squared
    weights summed as each part's 1 / ESS times its share squared."""
    masses = torch.stack([part.log_mass.double() for part in parts])  # [S, P]
    total = torch.logsumexp(masses, dim=0)
    no_path = torch.isneginf(total)
    share = torch.where(no_path, 0.0, (masses - total.where(~no_path, 0.0)).exp())  # [S, P]
    dtype = parts[0].weights.dtype
    weights = torch.cat(
        [part.weights.double() * share[s, :, None] for s, part in enumerate(parts)], dim=1
    )
    indices = torch.cat([part.bank_indices for part in parts], dim=1)
    weights = torch.where(indices >= 0, weights, -1.0)  # empty slots sort last
    best, keep = weights.topk(min(top, weights.shape[1]), dim=1)
    best_indices = torch.where(best >= 0, indices.gather(1, keep), NO_ROW)
    squared = sum(
        torch.where(part.effective_sample_size > 0, 1.0 / part.effective_sample_size.double(), 0.0)
        * share[s] ** 2
        for s, part in enumerate(parts)
    )
    ess = torch.where(no_path, 0.0, 1.0 / squared)
    best_indices = best_indices.masked_fill(no_path[:, None], NO_ROW)
    return Explanation(
        best_indices, best.clamp(min=0).to(dtype), ess.to(dtype), total.to(parts[0].log_mass.dtype)
    )


def _line_shifts(
    left: torch.Tensor, right: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each pair's row maximum a [P, 1] and column maximum b [P, 1]; 0 where a line is all
    -inf (or the bank is empty)."""
    if left.shape[1] == 0:
        zeros = torch.zeros((rows.numel(), 1), dtype=left.dtype, device=left.device)
        return zeros, zeros
    row_max, col_max = left.amax(dim=1)[rows, None], right.amax(dim=0)[cols, None]
    return (
        torch.where(torch.isfinite(row_max), row_max, torch.zeros_like(row_max)),
        torch.where(torch.isfinite(col_max), col_max, torch.zeros_like(col_max)),
    )


def _relative_paths(
    left: torch.Tensor,
    right: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    shifts: tuple[torch.Tensor, torch.Tensor],
    block: int,
) -> Iterator[tuple[int, torch.Tensor]]:
    """(m0, (left[rows, m] - a) + (right[m, cols] - b)) for blocks of bank rows m0 <= m < m1.

    Each difference is at most 0 and exact for values within a factor two of their maximum, so
    the sum loses nothing to the magnitude of either side.
    """
    row_shift, col_shift = shifts
    bank = left.shape[1]
    for m0 in range(0, bank, block):
        m1 = min(bank, m0 + block)
        yield m0, (left[rows, m0:m1] - row_shift) + (right[m0:m1][:, cols].T - col_shift)


def effective_sample_size(
    left: torch.Tensor, right: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """ESS [P] of the bridge weights for each pair (rows[p], cols[p]); 0 for a pair with no
    finite path."""
    return explain_pairs(left, right, rows, cols, top=1).effective_sample_size
