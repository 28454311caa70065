"""Per-trial recall and rank from score matrices computed once.

The score of a (query, candidate) pair under `lse`, `caption` and `direct` depends on that pair
alone (and on the bank), never on the other candidates of its trial. So the scores of all the
items that trials use are computed as one [items, items] matrix (per block of trials, when
there are very many items), and each trial reads its [candidates, candidates] sub-matrix:
exactly the numbers that scoring each trial on its own would give, at the cost of one pass
over the bank.

`topk` is the exception (not `pairwise` in the method table): the number T of nearest bank
rows grows until the trial's leading `max(ks)` candidates are certified, so it depends on the
trial, and its memory grows with queries * T * candidates. It is scored one trial at a time
(`block_limit`), exactly as `ucl query --method topk` would rank that trial's candidates.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ucl_cli.bridge.methods import Bridge, Method, ScoringSettings
from ucl_cli.estimators import recall_at_k_per_query
from ucl_cli.estimators.metrics import positive_rank_bounds
from ucl_cli.evaluation.trials import trial_blocks

# (queries [U, d1], candidates [U, d2]) -> scores [U, U], higher is better.
Scorer = Callable[[np.ndarray, np.ndarray], torch.Tensor]


@dataclass(frozen=True)
class TrialMetrics:
    """Per-trial averages over the trial's queries (fair ties): recall@k, the mean rank, and
    the log-likelihood of the positive when the trial's scores are read as log density ratios
    (log softmax over the trial's candidates: a proper scoring rule, which `ucl calibrate`
    selects by)."""

    recall: dict[int, np.ndarray]  # k -> float64 [trials]
    mean_rank: np.ndarray  # float64 [trials]
    log_likelihood: np.ndarray  # float64 [trials]


def method_scorer(method: Method, bridge: Bridge, settings: ScoringSettings, top: int) -> Scorer:
    """`method`'s scores through `bridge` (the bank or a sub-bank); `top`: the leading positions
    `topk` certifies."""
    return lambda q, c: method.score(bridge, q, c, settings, top).values


def block_limit(method: Method, candidates: int, block_items: int) -> int:
    """Most items one score matrix may cover for `method` (one trial's unless `pairwise`)."""
    return block_items if method.pairwise else candidates


def measure_trials(
    scorer: Scorer,
    queries: np.ndarray,
    candidates: np.ndarray,
    trials: np.ndarray,
    ks: Sequence[int],
    block_items: int,
) -> TrialMetrics:
    """Recall@k and mean rank of every trial; queries[i] and candidates[i] are item i's files.

    trials: int [T, K] item indices; in each trial query j's positive is candidate j.
    """
    count, size = trials.shape
    recall = {k: np.empty(count) for k in ks}
    mean_rank = np.empty(count)
    log_likelihood = np.empty(count)
    positives = torch.arange(size)
    for trial_ids, items in trial_blocks(trials, block_items):
        values = scorer(queries[items], candidates[items]).detach().cpu()
        local = torch.from_numpy(np.searchsorted(items, trials[trial_ids]))  # [B, K]
        flat = values[local[:, :, None], local[:, None, :]].reshape(-1, size)
        flat_positives = positives.repeat(len(trial_ids))
        for k in ks:
            per_query = recall_at_k_per_query(flat, flat_positives, k)
            recall[k][trial_ids] = per_query.reshape(-1, size).mean(dim=1).numpy()
        better, tied = positive_rank_bounds(flat, flat_positives)
        ranks = better.double() + 1.0 + tied.double() / 2.0
        mean_rank[trial_ids] = ranks.reshape(-1, size).mean(dim=1).numpy()
        positive_log_p = _positive_log_probability(flat, flat_positives)
        log_likelihood[trial_ids] = positive_log_p.reshape(-1, size).mean(dim=1).numpy()
    return TrialMetrics(recall, mean_rank, log_likelihood)


def _positive_log_probability(scores: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """log softmax of each row's positive, in float64. A row with no finite score carries no
    information: uniform (-log K); a positive at -inf beside finite others: -inf."""
    values = scores.double()
    blank = torch.isneginf(values).all(dim=1, keepdim=True)
    values = torch.where(blank, torch.zeros_like(values), values)
    log_p = values.log_softmax(dim=1)
    return log_p.gather(1, positives[:, None]).squeeze(1)
