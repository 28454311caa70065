"""Top-K approximation of the bridge score with certified lower and upper bounds.

For a query n and a candidate k only the bank items that are near one of them matter at large
logit scales. Let I_n be the T bank rows with the largest left[n, :] and J_k the T rows with the
largest right[:, k], U = I_n | J_k. Every term of the bridge sum over U is known exactly; every
other row m has left[n, m] <= (T-th largest left of n) and right[m, k] <= (T-th largest right of
k), so with S = sum_m exp(left[n, m] + right[m, k]):

    sum_U  <=  S  <=  sum_U + (M - |U|) * exp(left_T[n] + right_T[k])

(an approximate index supplies its own ceiling for the rows it did not visit, see
`TopEntries`), and a known floor on the critics (cosine >= -1, so left >= -s1) raises the lower
bound to sum_U + (M - |U|) * exp(left_floor + right_floor). Both bounds are returned in the
score's units (log, minus log M). They need only the top-T lists (from a FAISS search) and the
critic values between the query and J_k and between I_n and the candidate, never the whole bank.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ucl_cli.errors import UsageError


@dataclass(frozen=True)
class TopEntries:
    """The T largest critic values of each row, with their bank indices. values [R, T], desc.

    ceiling [R], optional: an upper bound on the value of every row NOT listed. For an exact
    search it is the T-th value (the default); an approximate index (IVF) must supply a larger
    one that covers the lists it did not visit.
    """

    values: torch.Tensor
    indices: torch.Tensor
    ceiling: torch.Tensor | None = None

    def unlisted_ceiling(self) -> torch.Tensor:
        if self.ceiling is None:
            return self.values[:, -1]
        return torch.maximum(self.ceiling.to(self.values.dtype), self.values[:, -1])


@dataclass(frozen=True)
class BridgeBounds:
    """Certified bounds lower <= bridge_scores <= upper, both [N, K]."""

    lower: torch.Tensor
    upper: torch.Tensor

    @property
    def estimate(self) -> torch.Tensor:
        """Midpoint in log space; exact where the bounds meet."""
        return 0.5 * (self.lower + self.upper)

    @property
    def width(self) -> torch.Tensor:
        return self.upper - self.lower


@dataclass(frozen=True)
class CertifiedRanking:
    """Candidates per query ordered by the bound midpoint, and which positions are certain.

    order [N, K]: candidate indices, best first. certified [N, K]: True where the candidate at
    that position is provably there: its lower bound beats every upper bound below it and its
    upper bound is beaten by every lower bound above it.
    """

    order: torch.Tensor
    certified: torch.Tensor

    def leading_certified(self) -> torch.Tensor:
        """[N]: how many of the first positions are all certified (the trustworthy prefix)."""
        return self.certified.int().cumprod(dim=1).sum(dim=1)


def top_entries(scores: torch.Tensor, t: int) -> TopEntries:
    """The T largest entries of each row of scores [R, M] (clamped to M)."""
    values, indices = scores.topk(min(t, scores.shape[1]), dim=1)
    return TopEntries(values, indices)


def topk_bridge_bounds(
    left_top: TopEntries,
    right_top: TopEntries,
    right_at_left_top: torch.Tensor,
    left_at_right_top: torch.Tensor,
    bank_size: int,
    *,
    left_floor: float = -math.inf,
    right_floor: float = -math.inf,
) -> BridgeBounds:
    """Bounds on bridge_scores [N, K] from top-T lists.

    left_top: per query n, the T largest left[n, :] (values, bank indices) [N, T].
    right_top: per candidate k, the T largest right[:, k] [K, T].
    right_at_left_top [N, T, K]: right[left_top.indices[n, t], k].
    left_at_right_top [N, K, T]: left[n, right_top.indices[k, t]].
    left_floor/right_floor: known minima of the critics (e.g. -scale for cosine), or -inf.
    """
    n, t_left = left_top.values.shape
    k, t_right = right_top.values.shape
    if right_at_left_top.shape != (n, t_left, k) or left_at_right_top.shape != (n, k, t_right):
        raise UsageError(
            "cross terms must be right_at_left_top [N, T, K] and left_at_right_top [N, K, T]; "
            f"got {tuple(right_at_left_top.shape)} and {tuple(left_at_right_top.shape)}"
        )
    # Terms through the query's own top rows I_n: [N, T, K] -> logsumexp over T.
    through_query_top = torch.logsumexp(left_top.values[:, :, None] + right_at_left_top, dim=1)
    # Terms through the candidate's top rows J_k, skipping rows already counted in I_n.
    already_counted = _membership(right_top.indices, left_top.indices)  # [N, K, T]
    paths = left_at_right_top + right_top.values[None, :, :]
    paths = paths.masked_fill(already_counted, -math.inf)
    through_candidate_top = torch.logsumexp(paths, dim=2)
    known = torch.logaddexp(through_query_top, through_candidate_top)

    union_size = t_left + (~already_counted).sum(dim=2)  # [N, K]
    rest = (bank_size - union_size).to(known.dtype)
    if bool((rest < 0).any()):
        raise UsageError(f"bank_size {bank_size} is smaller than the top lists it was given")
    log_rest = torch.log(rest)  # -inf where every row is known: the bounds then coincide
    ceiling = left_top.unlisted_ceiling()[:, None] + right_top.unlisted_ceiling()[None, :]
    upper = torch.logaddexp(known, log_rest + ceiling)
    lower = torch.logaddexp(known, log_rest + (left_floor + right_floor))
    log_m = math.log(bank_size)
    return BridgeBounds(lower=lower - log_m, upper=upper - log_m)


def topk_bounds_from_matrices(
    left: torch.Tensor,
    right: torch.Tensor,
    t: int,
    *,
    left_floor: float = -math.inf,
    right_floor: float = -math.inf,
) -> BridgeBounds:
    """The same bounds computed from full left [N, M] and right [M, K] (tests, small banks)."""
    left_top = top_entries(left, t)
    right_top = top_entries(right.T, t)
    right_at_left_top = right[left_top.indices]  # [N, T, K]
    left_at_right_top = left[:, right_top.indices]  # [N, K, T]
    return topk_bridge_bounds(
        left_top,
        right_top,
        right_at_left_top,
        left_at_right_top,
        left.shape[1],
        left_floor=left_floor,
        right_floor=right_floor,
    )


def certify_ranking(bounds: BridgeBounds) -> CertifiedRanking:
    """Order candidates by the bound midpoint and mark the positions the bounds prove."""
    order = bounds.estimate.argsort(dim=1, descending=True, stable=True)
    lower = bounds.lower.gather(1, order)
    upper = bounds.upper.gather(1, order)
    n = lower.shape[0]
    fill_low = torch.full((n, 1), -math.inf, dtype=lower.dtype, device=lower.device)
    fill_high = torch.full((n, 1), math.inf, dtype=lower.dtype, device=lower.device)
    # Best upper bound among the positions after r, and worst lower bound among those before r.
    best_below = torch.cat([upper.flip(1).cummax(dim=1).values.flip(1)[:, 1:], fill_low], dim=1)
    worst_above = torch.cat([fill_high, lower.cummin(dim=1).values[:, :-1]], dim=1)
    certified = (lower > best_below) & (upper < worst_above)
    return CertifiedRanking(order=order, certified=certified)


def _membership(candidates: torch.Tensor, pool: torch.Tensor) -> torch.Tensor:
    """[N, K, T]: is candidates[k, t] among pool[n, :]? candidates [K, T], pool [N, T']."""
    n = pool.shape[0]
    k, t = candidates.shape
    sorted_pool = pool.sort(dim=1).values.contiguous()
    queries = candidates.reshape(1, k * t).expand(n, k * t).contiguous()
    position = torch.searchsorted(sorted_pool, queries).clamp_max(sorted_pool.shape[1] - 1)
    found = sorted_pool.gather(1, position) == queries
    return found.reshape(n, k, t)
