"""The exact bridge score (Lemma 1, docs/METHOD.md#the-estimator) and its sharded form.

    score[n, k] = logsumexp_m( left[n, m] + right[m, k] ) - log M

Shapes: left [N, M] (query n vs bank item m, already scaled: s1 * f_AB), right [M, K] (bank item m
vs candidate k: s2 * f_BC). Never materialises [N, M, K].

The fast route is a matrix product in exp space. With row shifts a[n] = max_m left[n, m] and
column shifts b[k] = max_m right[m, k], every factor exp(left - a), exp(right - b) lies in (0, 1]:

    score[n, k] = a[n] + b[k] + log( exp(left - a) @ exp(right - b) )[n, k] - log M

This is exact except where the best path for (n, k) is far from both maxima, so that the sum S
falls near the floating-point underflow range and its terms lose precision (or S becomes 0 and
the log -inf). Each underflowed term is wrong by at most ~2 * tiny (the smallest normal number),
so an S at least 4 * M * tiny / eps is accurate to within eps relative: in float32, a best path
up to ~58 nats below a[n] + b[k] (M = 1e5). The entries below that threshold (none at CLIP scale,
common when the bridge terms spread over more than ~80 nats) are recomputed, when the inputs are
float32, by the same product in float64 over their rows and columns alone, with every factor
taken times 2^BOOST (at most 2^BOOST, so that no sum overflows; a power of two, so that float64
keeps far more precision than float32 needs), which reaches ~990 nats below a[n] + b[k]; only the
entries beyond that (or beyond ~660 nats for float64 inputs) take an exact streamed logsumexp
over their bank rows. Float32 matrix products run at full IEEE precision (TF32 and bf16
shortcuts are switched off for the call).

Finite inputs of any magnitude give finite, correct scores (a value like -1e30 that masks a
candidate or bank row scores its true, huge negative value); only a score beyond the output
dtype's range rounds to -inf (or +inf), as any floating-point sum does. -inf entries carry no
path, and a pair with no path at all scores -inf.

Scales. `partial_bridge_scores` also takes a positive factor on either matrix (the temperatures
of `estimators.calibrated`):

    logsumexp_m( left_scale * left[n, m] + right_scale * right[m, k] )

with no scaled copy of either matrix: the shifts become scale * max, and each factor is formed
from the unscaled values in the same exp2 pass, as exp2(x * (scale * log2 e) - shift * log2 e),
or exp2((x - max) * (scale * log2 e)) for large shifts; the float64 recomputation and the
streamed fallback apply the same scales, so every guarantee above holds for the scaled sum (a
scaled maximum beyond the dtype's range is refused, as +inf would be).
`partial_bridge_scores_with_column_sums` returns, from the same pass, logsumexp_m right_scale *
right[m, k] as well: the bridge sum of one extra query row of zeros, whose factors are exactly 1
(written once into the chunk buffer, never read from a copy of left), so it costs one more row
of the matrix product; the fallbacks treat that row like any other.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from ucl_cli.errors import NonFiniteScoresError, UsageError

# Elements of one temporary block (about 64 MiB in float32); bounds extra memory for any M.
BLOCK_ELEMENTS = 1 << 24
# Bank rows summed by one low-precision matrix product before its result is added in float64.
PARTIAL_TERMS = 1024
# Elements of left and right processed per step of the loop. On CPU about 4 MiB in float32:
# smaller chunks lose more to per-operation overhead than they gain in cache locality
# (measured: 16-32k rows of width 50 is the sweet spot); on a GPU large enough that kernel
# launches do not dominate.
CHUNK_ELEMENTS = 1 << 20
CHUNK_ELEMENTS_GPU = 1 << 26
LOG2_E = 1.0 / math.log(2.0)
# log2 of the smallest normal number of each working dtype.
SMALLEST_NORMAL_EXPONENT = {
    dtype: float(math.log2(torch.finfo(dtype).tiny)) for dtype in (torch.float32, torch.float64)
}
# The float64 recomputation of float32 inputs takes factors exp(x - shift) * 2^BOOST (at most
# 2^BOOST each), so that a path 2 * BOOST bits below the shifts still gives a product far above
# the smallest normal number; 2 * BOOST + 64 (at most 2^64 bank rows) stays below float64's top
# exponent (1024), so no sum overflows. Added to an exponent of about 480, it rounds by ~2^-44
# (irrelevant to a float32 result; it would cost float32 factors their precision, hence float64
# only, and float64 inputs keep their own precision).
FLOAT64_BOOST = float((1024 - 64 - 2) // 2)
# The fused exponent x * log2 e - a * log2 e rounds by about |a| * eps, however close x is to the
# shift a; past this rounding (float32: |a| > 2048) the factors are formed as
# exp2((x - a) * log2 e) instead, whose rounding is |x - a| * eps (one more pass over the chunk).
FUSED_SHIFT_ROUNDING = 2.0**-12


@dataclass(frozen=True)
class PartialScores:
    """The bridge sum over one shard of the bank, before normalising by the bank size.

    lse: [N, K] float64, logsumexp over this shard's bank rows (-inf for an empty shard); kept
      in float64 so that combining many shards adds no float32 rounding.
    count: how many bank rows the shard holds.
    dtype: the dtype the final scores are returned in (the inputs' working dtype).
    """

    lse: torch.Tensor
    count: int
    dtype: torch.dtype = torch.float64


def bridge_scores(
    left: torch.Tensor,
    right: torch.Tensor,
    *,
    chunk_size: int | None = None,
    left_scale: float = 1.0,
    right_scale: float = 1.0,
) -> torch.Tensor:
    """Exact Monte Carlo bridge score [N, K] for left [N, M] and right [M, K] (with scales:
    logsumexp_m(left_scale * left + right_scale * right) - log M).

    Float64 in, float64 out; float32 in, float32 out; float16/bfloat16 are computed and returned
    in float32. Works on any device torch supports; nothing is moved between devices.
    """
    part = partial_bridge_scores(
        left, right, chunk_size=chunk_size, left_scale=left_scale, right_scale=right_scale
    )
    return combine_partials([part])


def partial_bridge_scores(
    left_shard: torch.Tensor,
    right_shard: torch.Tensor,
    *,
    chunk_size: int | None = None,
    left_scale: float = 1.0,
    right_scale: float = 1.0,
) -> PartialScores:
    """logsumexp_m(left_scale * left[n, m] + right_scale * right[m, k]) over one shard of bank
    rows; combine shards with `combine_partials`. The scales (positive, finite) multiply the
    values inside the exponent; no scaled copy of either matrix is made.

    Any split of the bank rows into shards (across chunks, GPUs or machines) combines to the
    same scores as one call over the whole bank.
    """
    lse, count, dtype = _partial_lse(
        left_shard, right_shard, chunk_size, (left_scale, right_scale), ones_row=False
    )
    return PartialScores(lse, count, dtype)


def partial_bridge_scores_with_column_sums(
    left_shard: torch.Tensor,
    right_shard: torch.Tensor,
    *,
    chunk_size: int | None = None,
    left_scale: float = 1.0,
    right_scale: float = 1.0,
) -> tuple[PartialScores, torch.Tensor]:
    """`partial_bridge_scores`, and from the same pass logsumexp_m right_scale * right[m, k]:
    [K] float64 (-inf for an empty shard), which adds across shards like the bridge sum.

    The column sum is the bridge sum of a query row of zeros; that row's factors are exactly 1,
    so it is one more row of each chunk's matrix product (no copy of left), exact by the same
    guard and fallbacks as every other row.
    """
    lse, count, dtype = _partial_lse(
        left_shard, right_shard, chunk_size, (left_scale, right_scale), ones_row=True
    )
    return PartialScores(lse[:-1], count, dtype), lse[-1]


def combine_partials(parts: Sequence[PartialScores]) -> torch.Tensor:
    """Scores [N, K] from the partial sums of disjoint shards: logaddexp, then minus log M."""
    if not parts:
        raise UsageError("combine_partials needs at least one partial result")
    total = sum(part.count for part in parts)
    if total == 0:
        raise UsageError("the bank is empty: every shard has zero rows")
    shapes = {tuple(part.lse.shape) for part in parts}
    if len(shapes) != 1:
        raise UsageError(f"partial results disagree on the [N, K] shape: {sorted(shapes)}")
    dtypes = {part.dtype for part in parts}
    out_dtype = torch.float64 if torch.float64 in dtypes else parts[0].dtype
    if len(parts) == 1:
        lse = parts[0].lse
    else:
        lse = torch.logsumexp(torch.stack([part.lse.double() for part in parts]), dim=0)
    return (lse - math.log(total)).to(out_dtype)


def exact_pair_scores(
    left: torch.Tensor,
    right: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    *,
    left_scale: float = 1.0,
    right_scale: float = 1.0,
    block_elements: int = BLOCK_ELEMENTS,
) -> torch.Tensor:
    """logsumexp_m(left_scale * left[rows[p], m] + right_scale * right[m, cols[p]]) for P pairs,
    streamed: [P].

    Memory is bounded by `block_elements` whatever P and M are. This is the slow, always-exact
    route, used for the entries the matrix-product route cannot certify.
    """
    pairs, bank = rows.numel(), left.shape[1]
    out = torch.full((pairs,), -math.inf, dtype=left.dtype, device=left.device)
    if pairs == 0 or bank == 0:
        return out
    pair_block = max(1, min(pairs, block_elements // bank))
    bank_block = max(1, block_elements // pair_block)
    for p0 in range(0, pairs, pair_block):
        r, c = rows[p0 : p0 + pair_block], cols[p0 : p0 + pair_block]
        acc = out[p0 : p0 + pair_block]
        for m0 in range(0, bank, bank_block):
            # Advanced indexing gathers fresh blocks: scaling them in place copies nothing more.
            paths = left[r, m0 : m0 + bank_block]
            if left_scale != 1.0:
                paths.mul_(left_scale)
            paths.add_(right[m0 : m0 + bank_block][:, c].T, alpha=right_scale)
            acc = torch.logaddexp(acc, torch.logsumexp(paths, dim=1))
        out[p0 : p0 + pair_block] = acc
    return out


def _validated(left: torch.Tensor, right: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if left.dim() != 2 or right.dim() != 2:
        raise UsageError(
            f"left must be [N, M] and right [M, K]; got shapes {tuple(left.shape)} "
            f"and {tuple(right.shape)}"
        )
    if left.shape[1] != right.shape[0]:
        raise UsageError(
            f"left has {left.shape[1]} bank columns but right has {right.shape[0]} bank rows; "
            "the two bank matrices must be row-aligned"
        )
    if left.device != right.device:
        raise UsageError(f"left is on {left.device} but right is on {right.device}")
    if not (left.is_floating_point() and right.is_floating_point()):
        raise UsageError(f"scores must be floating point; got {left.dtype} and {right.dtype}")
    dtype = torch.promote_types(left.dtype, right.dtype)
    if dtype in (torch.float16, torch.bfloat16):
        dtype = torch.float32
    return left.to(dtype), right.to(dtype)


def _validated_scales(scales: tuple[float, float]) -> tuple[float, float]:
    checked = []
    for name, value in zip(("left_scale", "right_scale"), scales, strict=True):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise UsageError(f"{name} must be a number, got {value!r}") from None
        if not (math.isfinite(number) and number > 0):
            raise UsageError(f"{name} must be positive and finite, got {value!r}")
        checked.append(number)
    return checked[0], checked[1]


def _partial_lse(
    left_shard: torch.Tensor,
    right_shard: torch.Tensor,
    chunk_size: int | None,
    scales: tuple[float, float],
    *,
    ones_row: bool,
) -> tuple[torch.Tensor, int, torch.dtype]:
    """The validated inputs' scaled logsumexp [N (+ 1 with `ones_row`), K], bank size, dtype."""
    left, right = _validated(left_shard, right_shard)
    scales = _validated_scales(scales)
    if left.shape[1] == 0:
        shape = (left.shape[0] + ones_row, right.shape[1])
        empty = torch.full(shape, -math.inf, dtype=torch.float64, device=left.device)
        return empty, 0, left.dtype
    lse = _log_sum_exp_product(left, right, chunk_size, scales, ones_row=ones_row)
    return lse, left.shape[1], left.dtype


def _log_sum_exp_product(
    left: torch.Tensor,
    right: torch.Tensor,
    chunk_size: int | None,
    scales: tuple[float, float] = (1.0, 1.0),
    *,
    ones_row: bool = False,
) -> torch.Tensor:
    """logsumexp_m(s1 left[n, m] + s2 right[m, k]) [N, K] float64, for scales (s1, s2): guarded
    product, then the same product in float64 for what float32 cannot resolve, then an exact
    streamed fallback. With `ones_row`, one more row N: that of a query row of zeros,
    logsumexp_m s2 right[m, k] (its shift is 0 and its factors are 1)."""
    left_scale, right_scale = scales
    row_max, row_peak = _shifts(left.amax(dim=1), "left", left_scale)
    col_max, col_peak = _shifts(_column_max(right), "right", right_scale)
    peaks = (row_peak, col_peak)
    options = {"scales": scales, "ones_row": ones_row}
    sums = _shifted_exp_product(left, right, row_max, col_max, peaks, chunk_size, **options)
    # The shifts scale * max in float64: exact enough whatever the scale, and never overflowing.
    row_shift = left_scale * row_max.double()
    if ones_row:
        row_shift = torch.cat([row_shift, row_shift.new_zeros(1)])
    col_shift = right_scale * col_max.double()
    lse = row_shift[:, None] + col_shift[None, :] + torch.log(sums)

    bank = left.shape[1]
    uncertain = sums < _trusted_floor(left.dtype, bank)
    if not bool(uncertain.any()):
        return lse
    rows, cols = uncertain.nonzero(as_tuple=True)
    if left.dtype != torch.float64:
        wide_sums = _float64_sums(
            left, right, row_max, col_max, peaks, rows, cols, chunk_size, **options
        )
        shifts = row_shift[rows] + col_shift[cols]
        lse[rows, cols] = shifts + torch.log(wide_sums) - 2.0 * FLOAT64_BOOST * math.log(2.0)
        beyond = wide_sums < _trusted_floor(torch.float64, bank, FLOAT64_BOOST)
        rows, cols = rows[beyond], cols[beyond]
    if rows.numel():
        lse[rows, cols] = _streamed_pairs(left, right, rows, cols, scales)
    return lse


def _streamed_pairs(
    left: torch.Tensor,
    right: torch.Tensor,
    rows: torch.Tensor,
    cols: torch.Tensor,
    scales: tuple[float, float],
) -> torch.Tensor:
    """`exact_pair_scores` [P] float64 for pairs whose row may be N, the query row of zeros
    (a zero-stride view of one zero: no [M] row, let alone an [N + 1, M] copy, is allocated)."""
    scaled = {"left_scale": scales[0], "right_scale": scales[1]}
    zeros = rows == left.shape[0]
    if not bool(zeros.any()):
        return exact_pair_scores(left, right, rows, cols, **scaled).double()
    out = torch.empty(rows.shape, dtype=torch.float64, device=left.device)
    out[~zeros] = exact_pair_scores(left, right, rows[~zeros], cols[~zeros], **scaled).double()
    zero_row = left.new_zeros(()).expand(1, left.shape[1])
    column = exact_pair_scores(zero_row, right, rows[zeros] * 0, cols[zeros], **scaled)
    out[zeros] = column.double()
    return out


def _trusted_floor(dtype: torch.dtype, bank: int, boost: float = 0.0) -> float:
    """The smallest sum of `bank` terms (factors at most 2^boost) accurate to eps/2 relative.

    A factor clamped up to the smallest normal number (tiny) is wrong by at most tiny, so its
    term by at most tiny * 2^boost; a product below tiny, flushed or subnormal, by at most tiny.
    Every term is thus within tiny * max(2, 2^boost), and the sum within bank times that. (The
    query row of zeros has factors exactly 2^boost, never clamped: the same bound holds.)
    """
    info = torch.finfo(dtype)
    term_error = info.tiny * max(2.0, 2.0**boost)
    return 2.0 * bank * term_error / info.eps


def _float64_sums(
    left: torch.Tensor,
    right: torch.Tensor,
    row_max: torch.Tensor,
    col_max: torch.Tensor,
    peaks: tuple[float, float],
    rows: torch.Tensor,
    cols: torch.Tensor,
    chunk_size: int | None,
    *,
    scales: tuple[float, float] = (1.0, 1.0),
    ones_row: bool = False,
) -> torch.Tensor:
    """S * 2^(2 * FLOAT64_BOOST) [P] for the pairs (rows[p], cols[p]), by the shifted product in
    float64 with boosted factors (row N, with `ones_row`, being the query row of zeros).

    This reaches ~990 nats below the shifts where float32 reaches ~58: wide-range float32
    inputs, whose pairs mostly fail float32's guard, then cost one more product, not a stream
    over [P, M]. The product runs over the pairs' distinct rows and columns only.
    """
    line_rows, pair_row = torch.unique(rows, return_inverse=True)  # sorted: row N comes last
    line_cols, pair_col = torch.unique(cols, return_inverse=True)
    with_ones = ones_row and bool(line_rows[-1] == left.shape[0])
    if with_ones:
        line_rows = line_rows[:-1]
    sums = _shifted_exp_product(
        left,
        right,
        row_max.double()[line_rows],
        col_max.double()[line_cols],
        peaks,
        chunk_size,
        scales=scales,
        rows=None if line_rows.numel() == left.shape[0] else line_rows,
        cols=None if line_cols.numel() == right.shape[1] else line_cols,
        dtype=torch.float64,
        boost=FLOAT64_BOOST,
        ones_row=with_ones,
    )
    return sums[pair_row, pair_col]


def _shifted_exp_product(
    left: torch.Tensor,
    right: torch.Tensor,
    row_max: torch.Tensor,
    col_max: torch.Tensor,
    peaks: tuple[float, float],
    chunk_size: int | None,
    *,
    scales: tuple[float, float] = (1.0, 1.0),
    rows: torch.Tensor | None = None,
    cols: torch.Tensor | None = None,
    dtype: torch.dtype | None = None,
    boost: float = 0.0,
    ones_row: bool = False,
) -> torch.Tensor:
    """S = sum_m exp(s1 left[n, m] - a[n]) * exp(s2 right[m, k] - b[k]) [N, K] float64, a chunk
    of bank rows at a time, times 2^(2 * boost), where (s1, s2) = `scales` and the shifts are
    a = s1 * row_max, b = s2 * col_max; over left's `rows` and right's `cols` only when given
    (the maxima are then those lines'), with factors in `dtype` (default: the inputs'). `peaks`
    are the largest |a| and |b| over all lines (they choose the exponent form). With `ones_row`,
    S has one more row, that of a query row of zeros (shift 0): its factors, exactly 2^boost,
    are written into the chunk buffer once, so the product yields sum_m exp(s2 right - b) too.

    The shifts are the global maxima, found first by two cheap reductions, so the loop over
    chunks does nothing but exponentiate and multiply (an online, flash-style running maximum
    measured slower on CPU: it doubles the small operations per chunk).

    Each matrix product in the input dtype sums at most PARTIAL_TERMS bank rows (a batched
    product over [C, PARTIAL_TERMS] blocks of a chunk); partial sums are added in float64, so
    float32 rounding does not grow with the bank size.
    """
    dtype = dtype or left.dtype
    bank = left.shape[1]
    n, k = row_max.shape[0], col_max.shape[0]
    lines = n + 1 if ones_row else n
    budget = CHUNK_ELEMENTS if left.device.type == "cpu" else CHUNK_ELEMENTS_GPU
    # At least PARTIAL_TERMS rows a step: many tiny steps cost more in per-op overhead (and in
    # thread wake-ups on a busy machine) than they gain in cache locality.
    chunk = chunk_size or max(PARTIAL_TERMS, budget // (lines + k))
    if chunk > PARTIAL_TERMS:
        chunk = chunk // PARTIAL_TERMS * PARTIAL_TERMS
    chunk = min(chunk, bank)
    sums = torch.zeros((lines, k), dtype=torch.float64, device=left.device)
    left_buffer = torch.empty((lines, chunk), dtype=dtype, device=left.device)
    right_buffer = torch.empty((chunk, k), dtype=dtype, device=left.device)
    if ones_row:
        left_buffer[n].fill_(2.0**boost)  # exp(s1 * 0 - 0) * 2^boost, for every bank row
    left_scale, right_scale = scales
    # exp(s x - s max) * 2^boost = exp2(x * (s log2 e) - max * (s log2 e) + boost): one fused
    # multiply-add pass, then exp2; for shifts so large that the fused form's rounding matters,
    # exp2((x - max) * (s log2 e) + boost).
    eps = torch.finfo(dtype).eps
    row_centred, col_centred = (peak * eps > FUSED_SHIFT_ROUNDING for peak in peaks)
    row_offset = row_max if row_centred else _fused_offset(row_max, left_scale, boost)
    col_offset = col_max if col_centred else _fused_offset(col_max, right_scale, boost)
    row_form = {"scale": left_scale, "centred": row_centred, "boost": boost}
    col_form = {"scale": right_scale, "centred": col_centred, "boost": boost}
    with _full_precision_matmul(), _flush_denormals(left.device):
        for m0 in range(0, bank, chunk):
            left_chunk, right_chunk = left[:, m0 : m0 + chunk], right[m0 : m0 + chunk]
            if rows is not None:
                left_chunk = left_chunk.index_select(0, rows)
            if cols is not None:  # index_select: several times faster than [:, cols] on CPU
                right_chunk = right_chunk.index_select(1, cols)
            width = left_chunk.shape[1]
            if n:
                _exp2_of_affine(
                    left_chunk, row_offset[:, None], left_buffer[:n, :width], **row_form
                )
            right_factor = _exp2_of_affine(
                right_chunk, col_offset[None, :], right_buffer[:width], **col_form
            )
            sums += _blocked_product(left_buffer[:, :width], right_factor)
    return sums


def _fused_offset(maxima: torch.Tensor, scale: float, boost: float) -> torch.Tensor:
    """-scale * max * log2 e + boost, the offset of the fused exponent."""
    offset = maxima * (-scale * LOG2_E)
    return offset.add_(boost) if boost else offset


def _exp2_of_affine(
    values: torch.Tensor,
    offset: torch.Tensor,
    out: torch.Tensor,
    *,
    scale: float = 1.0,
    centred: bool = False,
    boost: float = 0.0,
) -> torch.Tensor:
    """exp2(values * (scale log2 e) + offset) written into `out`, never subnormal; with
    `centred`, exp2((values - offset) * (scale log2 e) + boost), the offset then being the
    unscaled maximum itself. Either way no scaled copy of `values` is made.

    torch's exp2 is about twice as fast as exp on CPU; the extra rounding of the product is of
    the same order as that of the subtraction (|values - shift| * eps), inside the stated
    tolerance, as long as the shift is moderate (the fused form also rounds |shift| * eps, which
    for a shift of -1e30 is far more than the whole range of exp2: hence `centred`). The
    centred form subtracts before it scales: values - max is exact near the maximum (and never
    positive), where scale * values - scale * max would round each product by |shift| * eps.
    Arguments are clamped at the exponent of the smallest normal number: a subnormal
    result takes exp2 (and later products) on a path up to four times slower, and the flush-to-
    zero switch reaches only the calling thread, not torch's worker threads. The clamp changes
    a factor by less than the smallest normal number, its term by less than that times the other
    factor (at most 2^boost), which the underflow guard (`_trusted_floor`) accounts for.
    """
    rows, width = values.shape
    fold = 64  # a per-column offset over narrow rows vectorises poorly: fold rows into one
    target = out
    if offset.shape[0] == 1 and width < 256 and rows % fold == 0 and values.is_contiguous():
        wide = (rows // fold, fold * width)
        values, offset, target = values.view(wide), offset.repeat(1, fold), out.view(wide)
    if centred:
        torch.sub(values, offset, out=target).mul_(scale * LOG2_E)
        if boost:
            target.add_(boost)
    else:
        torch.add(offset, values, alpha=scale * LOG2_E, out=target)
    return out.clamp_min_(SMALLEST_NORMAL_EXPONENT[out.dtype]).exp2_()


def _blocked_product(left_factor: torch.Tensor, right_factor: torch.Tensor) -> torch.Tensor:
    """left_factor @ right_factor in float64, each low-precision product over <= PARTIAL_TERMS."""
    n, rows = left_factor.shape
    k = right_factor.shape[1]
    if rows <= PARTIAL_TERMS:
        return (left_factor @ right_factor).double()
    whole = rows // PARTIAL_TERMS * PARTIAL_TERMS
    blocks = whole // PARTIAL_TERMS
    partial = torch.bmm(
        left_factor[:, :whole].reshape(n, blocks, PARTIAL_TERMS).transpose(0, 1),
        right_factor[:whole].reshape(blocks, PARTIAL_TERMS, k),
    ).sum(dim=0, dtype=torch.float64)
    if whole < rows:
        partial += (left_factor[:, whole:] @ right_factor[whole:]).double()
    return partial


def _column_max(x: torch.Tensor) -> torch.Tensor:
    """x.amax(dim=0), fast for narrow x: torch reduces a [rows, 25] column slowly on CPU, so
    fold groups of rows into one long contiguous row first."""
    rows, width = x.shape
    group = 64
    if x.device.type != "cpu" or width >= 256 or rows < 2 * group or not x.is_contiguous():
        return x.amax(dim=0)
    whole = rows // group * group
    folded = x[:whole].reshape(-1, group * width).amax(dim=0).view(group, width).amax(dim=0)
    return folded if whole == rows else torch.maximum(folded, x[whole:].amax(dim=0))


def _shifts(maxima: torch.Tensor, name: str, scale: float = 1.0) -> tuple[torch.Tensor, float]:
    """The line maxima, 0 for a line that is all -inf (no path at all, so that nothing becomes
    NaN), and the largest magnitude of the shifts scale * max; NaN or +inf in the input is
    refused, and so is a scaled maximum beyond the dtype's range (it would be +inf: any scaled
    value overflowing to -inf is a path far below the others, whose loss changes nothing). One
    device-to-host read (amax propagates NaN), two only when the scale might overflow."""
    shift = torch.where(torch.isneginf(maxima), torch.zeros_like(maxima), maxima)
    peak = float(shift.abs().amax()) if shift.numel() else 0.0
    if not math.isfinite(peak):
        raise NonFiniteScoresError(f"{name} contains NaN or +inf; bridge scores need finite input")
    top = torch.finfo(shift.dtype).max
    if peak * scale > top and float(shift.amax()) * scale > top:
        raise NonFiniteScoresError(
            f"{name} times its scale {scale:g} exceeds the range of {shift.dtype}"
        )
    return shift, peak * scale


@contextlib.contextmanager
def _full_precision_matmul() -> Iterator[None]:
    """Switch off TF32/bf16 float32 matmul shortcuts for the call; restore the user's setting."""
    previous = torch.get_float32_matmul_precision()
    if previous == "highest":
        yield
        return
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


@contextlib.contextmanager
def _flush_denormals(device: torch.device) -> Iterator[None]:
    """Treat subnormal floats as zero on the CPU's calling thread for the call.

    Products of two small factors can be subnormal, where x86 arithmetic can be up to a hundred
    times slower. Flushing them changes each term by less than the smallest normal number,
    which the underflow guard already accounts for. (It does not reach torch's worker
    threads, which is why the factors themselves are clamped to normal numbers.)
    """
    if device.type != "cpu" or not torch.set_flush_denormal(True):
        yield
        return
    try:
        yield
    finally:
        torch.set_flush_denormal(False)
