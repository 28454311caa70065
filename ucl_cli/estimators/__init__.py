"""Pure tensor math of the bridge estimator: no files, no models, no hidden device moves.

Shape vocabulary: N queries, M bank items, K candidates, D embedding dimension.
left [N, M] = s1 * f_AB(query, bank), right [M, K] = s2 * f_BC(bank, candidate).
"""

from ucl_cli.estimators.bridge import (
    PartialScores,
    bridge_scores,
    combine_partials,
    exact_pair_scores,
    partial_bridge_scores,
)
from ucl_cli.estimators.critics import CRITICS, cosine, dot, get_critic, neg_sq_l2
from ucl_cli.estimators.explain import Explanation, effective_sample_size, explain_pairs
from ucl_cli.estimators.metrics import mean_rank, recall_at_k, recall_at_k_per_query
from ucl_cli.estimators.topk import (
    BridgeBounds,
    CertifiedRanking,
    GroupedRest,
    TopEntries,
    certify_ranking,
    rest_logmass,
    top_entries,
    topk_bounds_from_matrices,
    topk_bridge_bounds,
)

__all__ = [
    "CRITICS",
    "BridgeBounds",
    "CertifiedRanking",
    "Explanation",
    "GroupedRest",
    "PartialScores",
    "TopEntries",
    "bridge_scores",
    "certify_ranking",
    "combine_partials",
    "cosine",
    "dot",
    "effective_sample_size",
    "exact_pair_scores",
    "explain_pairs",
    "get_critic",
    "mean_rank",
    "neg_sq_l2",
    "partial_bridge_scores",
    "recall_at_k",
    "recall_at_k_per_query",
    "rest_logmass",
    "top_entries",
    "topk_bounds_from_matrices",
    "topk_bridge_bounds",
]
