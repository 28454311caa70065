"""The largest norm of a bank's rows: what certified bounds may assume instead of "unit norm".

Rows are renormalised when written, but only to float32 rounding, and banks written by older
versions accepted norms within 1e-3 of 1; a bound that takes cosines to lie in [-1, 1] would be
off by that much times the logit scale. So the writer records each model's largest row norm in
the manifest, rounded up, and the bounds use it.
"""

from __future__ import annotations

import numpy as np

_FLOAT64_EPS = float(np.finfo(np.float64).eps)


def largest_row_norm(vectors: np.ndarray, chunk: int = 1 << 16) -> float:
    """The largest norm of any row of [M, d] `vectors` (a memory map is fine), in float64 and
    rounded up past its own rounding, one chunk at a time."""
    largest = 0.0
    for start in range(0, len(vectors), chunk):
        rows = np.asarray(vectors[start : start + chunk], dtype=np.float64)
        if len(rows):
            largest = max(largest, float(np.sqrt(np.einsum("ij,ij->i", rows, rows).max())))
    return largest * (1 + 4 * _FLOAT64_EPS * (np.shape(vectors)[-1] + 2))
