"""Recall@1 within groups of held-out triplets, Direct and through a bank of B samples.

The held-out set is cut into groups of `group_size` triplets (32 in the paper, chance 1/32); each
a in a group ranks the group's c's and its own c is the positive. The last incomplete group is
dropped, as in the paper (1,000 triplets -> 31 groups).

The Monte Carlo score of Lemma 1 is `logsumexp_m(left[n, m] + right[m, k]) - log M`. A bank-size
sweep reuses one pass over the largest bank: the bank is cut into consecutive segments, each
segment's exact partial sum comes from `partial_bridge_scores`, and the running logaddexp of the
segments gives the scores of every prefix (M = 100, 300, ..., 100k) at the cost of the largest.
The effective sample size of the bridge weights w_m = softmax_m(left[n, m] + right[m, k]) comes
from the same machinery: ESS = (sum w)^2 / sum w^2, i.e. log ESS = 2 L(1) - L(2) with
L(t) = logsumexp_m t (left + right), and L(2) is the bridge sum of 2 left and 2 right.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from ucl_cli.errors import UsageError
from ucl_cli.estimators import get_critic, partial_bridge_scores, recall_at_k
from ucl_cli.estimators.calibrated import Calibration

# (group index) -> (left [Q, M], right [M, Q]) for that group's queries and candidates.
GroupTerms = Callable[[int], tuple[torch.Tensor, torch.Tensor]]


@dataclass(frozen=True)
class BankSweep:
    """Recall@1 and effective sample sizes of the bridge estimate at each bank size."""

    sizes: tuple[int, ...]
    recall: tuple[float, ...]
    ess_positive: tuple[float, ...]  # median ESS over matched pairs (a, its own c)
    ess_all: tuple[float, ...]  # median ESS over every (a, c) pair within a group

    def recall_at(self, size: int) -> float:
        return self.recall[self.sizes.index(size)]


def group_count(items: int, group_size: int) -> int:
    groups = items // group_size
    if groups < 1:
        raise UsageError(f"{items} held-out triplets cannot fill one group of {group_size}")
    return groups


def grouped_recall(scores: torch.Tensor) -> float:
    """Recall@1 of scores [G, Q, Q] whose positives lie on each group's diagonal."""
    groups, size, _ = scores.shape
    positives = torch.arange(size).repeat(groups)
    return recall_at_k(scores.reshape(groups * size, size), positives, 1)


def direct_recall(phi_a: torch.Tensor, phi_c: torch.Tensor, critic: str, group_size: int) -> float:
    """Recall@1 of comparing A and C embeddings directly with the critic (scale-free)."""
    groups = group_count(phi_a.shape[0], group_size)
    score = get_critic(critic)
    scores = torch.stack(
        [
            score(
                phi_a[g * group_size : (g + 1) * group_size],
                phi_c[g * group_size : (g + 1) * group_size],
                1.0,
            )
            for g in range(groups)
        ]
    )
    return grouped_recall(scores)


def bank_sweep(
    terms: GroupTerms,
    groups: int,
    sizes: Sequence[int],
    ess: bool = True,
    calibration: Calibration | None = None,
) -> BankSweep:
    """Bridge recall@1 (and median ESS) for every bank prefix size in `sizes`; with a
    `calibration`, of the tempered and/or self-normalised score (`estimators.calibrated`), the
    ESS then being that of the weights it actually uses."""
    sizes = tuple(sorted(set(sizes)))
    calibration = calibration or Calibration()
    per_group = [
        _prefix_sums(*_tempered(*terms(g), calibration), sizes, ess) for g in range(groups)
    ]
    sums = torch.stack([first for first, _ in per_group], dim=1)  # [S, G, Q, Q]
    ranked = sums
    if calibration.normalize == "candidates":
        normalizers = torch.stack(
            [
                _prefix_normalizers(_tempered(*terms(g), calibration)[1], sizes)
                for g in range(groups)
            ],
            dim=1,
        )  # [S, G, Q]: log sum_m exp(t2 right[m, k]) over each prefix (log M cancels in ranks)
        ranked = sums - normalizers[:, :, None, :]
    recall = tuple(grouped_recall(ranked[s]) for s in range(len(sizes)))
    if not ess:
        nan = tuple(float("nan") for _ in sizes)
        return BankSweep(sizes, recall, nan, nan)
    squares = torch.stack([second for _, second in per_group], dim=1)
    log_ess = 2.0 * sums.double() - squares.double()
    positive = log_ess.diagonal(dim1=2, dim2=3)
    ess_positive = tuple(float(positive[s].exp().median()) for s in range(len(sizes)))
    ess_all = tuple(float(log_ess[s].exp().median()) for s in range(len(sizes)))
    return BankSweep(sizes, recall, ess_positive, ess_all)


def _tempered(
    left: torch.Tensor, right: torch.Tensor, calibration: Calibration
) -> tuple[torch.Tensor, torch.Tensor]:
    return left * calibration.query_temperature, right * calibration.candidate_temperature


def _prefix_normalizers(right: torch.Tensor, sizes: tuple[int, ...]) -> torch.Tensor:
    """[S, K]: logsumexp over the first `size` bank rows of each column of right [M, K]."""
    running, out, start = None, [], 0
    for size in sizes:
        part = torch.logsumexp(right[start:size].double(), dim=0)
        running = part if running is None else torch.logaddexp(running, part)
        out.append(running)
        start = size
    return torch.stack(out)


def _prefix_sums(
    left: torch.Tensor, right: torch.Tensor, sizes: tuple[int, ...], ess: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """logsumexp over bank prefixes: ([S, Q, Q], and of the doubled terms when ess)."""
    bank = left.shape[1]
    if sizes[-1] > bank:
        raise UsageError(f"bank size {sizes[-1]} asked for, but the bank holds only {bank} items")
    running = running_sq = None
    prefix, prefix_sq = [], []
    start = 0
    for size in sizes:
        part = partial_bridge_scores(left[:, start:size], right[start:size]).lse
        running = part if running is None else torch.logaddexp(running, part)
        prefix.append(running)
        if ess:
            part_sq = partial_bridge_scores(2.0 * left[:, start:size], 2.0 * right[start:size]).lse
            running_sq = part_sq if running_sq is None else torch.logaddexp(running_sq, part_sq)
            prefix_sq.append(running_sq)
        start = size
    return torch.stack(prefix), (torch.stack(prefix_sq) if ess else None)
