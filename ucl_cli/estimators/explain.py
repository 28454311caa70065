"""Why a candidate scored what it did: the bank items that carried the bridge sum.

For a pair (n, k) the weights w_m = softmax_m(left[n, m] + right[m, k]) say how much each bank
item contributed to the score; the effective sample size ESS = (sum w)^2 / sum w^2 = 1 / sum w^2
says how many items did the work. An ESS near 1 means one bank item decided the match, so a
larger or better-matched bank may change the answer (PAPER.md, Lemma 1).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ucl_cli.estimators.bridge import BLOCK_ELEMENTS, exact_pair_scores


@dataclass(frozen=True)
class Explanation:
    """For P pairs: the `top` heaviest bank rows, their weights, and each pair's ESS.

    bank_indices [P, top] (long), weights [P, top] (descending), effective_sample_size [P].
    """

    bank_indices: torch.Tensor
    weights: torch.Tensor
    effective_sample_size: torch.Tensor


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
    keeping a running top list and a running sum of squared weights.
    """
    pairs, bank = rows.numel(), left.shape[1]
    top = min(top, bank)
    log_norm = exact_pair_scores(left, right, rows, cols, block_elements=block_elements)
    best_weights = torch.full((pairs, 0), 0.0, dtype=left.dtype, device=left.device)
    best_indices = torch.zeros((pairs, 0), dtype=torch.long, device=left.device)
    squared_sum = torch.zeros(pairs, dtype=left.dtype, device=left.device)
    bank_block = max(1, block_elements // max(1, pairs))
    for m0 in range(0, bank, bank_block):
        m1 = min(bank, m0 + bank_block)
        weights = (left[rows, m0:m1] + right[m0:m1][:, cols].T - log_norm[:, None]).exp()
        squared_sum += (weights * weights).sum(dim=1)
        chunk_best, chunk_index = weights.topk(min(top, m1 - m0), dim=1)
        merged_weights = torch.cat([best_weights, chunk_best], dim=1)
        merged_indices = torch.cat([best_indices, chunk_index + m0], dim=1)
        best_weights, keep = merged_weights.topk(min(top, merged_weights.shape[1]), dim=1)
        best_indices = merged_indices.gather(1, keep)
    return Explanation(best_indices, best_weights, 1.0 / squared_sum)


def effective_sample_size(
    left: torch.Tensor, right: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> torch.Tensor:
    """ESS [P] of the bridge weights for each pair (rows[p], cols[p])."""
    return explain_pairs(left, right, rows, cols, top=1).effective_sample_size
