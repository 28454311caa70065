"""Candidates from several places ranked as one set, a chunk of rows at a time.

A query may rank files named on the command line (embedded through the cache) and the rows of
collections (banks of image or audio files embedded when they were indexed, read from their
memory-mapped matrices without touching the files). Each is a `CandidateSource`. Sources are
read in chunks of rows, each chunk scored by the method table as any candidate set is, and only
the best `top` of each query are kept from chunk to chunk: memory is O(chunk), not O(library).

For `topk` every chunk's certified bounds travel with its leaders, and every candidate a chunk
drops is covered by the largest upper bound among the dropped (`ceiling`). The kept leaders are
certified again, at the end, against each other and against that ceiling: a certificate over the
union is a proof about every candidate of every source, as it is over one candidate set.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ucl_cli.bridge.methods import Bridge, Method, ScoringSettings
from ucl_cli.errors import UsageError

if TYPE_CHECKING:
    from ucl_cli.bank import Bank
    from ucl_cli.encoders.base import Encoder

# Elements of the widest [bank chunk, candidate chunk] matrix a chunk may need (float32: 64 MiB).
CHUNK_ELEMENTS = 1 << 24
MIN_CHUNK_ROWS = 1024


@dataclass(frozen=True)
class CandidateSource:
    """Rows of candidate vectors and how to name each: files embedded for this query
    (`collection` None) or a collection's stored rows."""

    vectors: np.ndarray  # [K, d] float32; a memory map for a collection
    locate: Callable[[int], Path]  # row -> the candidate file's path
    collection: str | None = None
    # a collection's certified nearest-row search and largest row norm, for `topk`
    nearest: Callable | None = None
    row_norm: float | None = None
    # what names the collection's vectors and index (its manifest's checksums), so that
    # derived bounds can be saved for the next query
    identity: str | None = None
    # a cluster whose actors search the collection's shards for `topk` (`--cluster`):
    # (bridge, queries, keep, settings) -> Leaders
    remote: Callable | None = None

    def __len__(self) -> int:
        return int(self.vectors.shape[0])


def file_source(paths: Sequence[Path], vectors: np.ndarray) -> CandidateSource:
    """Files embedded for this run, row k being `paths[k]`."""
    listed = list(paths)
    return CandidateSource(np.asarray(vectors), listed.__getitem__)


def collection_source(
    collection: Bank, candidate_model: Encoder, device: str = "cpu"
) -> CandidateSource:
    """A collection's rows through the model that embeds its files; each hit is named by the
    path the file had when it was indexed (`ucl index` keeps it current, `--prune` drops the
    rows of deleted files). `topk` searches its index on `device` when FAISS can."""
    collection.check_models([candidate_model])  # other models or other weights are refused
    on_cluster = getattr(collection, "cluster_top", None)  # a collection held by Ray actors
    remote = None if on_cluster is None else functools.partial(on_cluster, key=candidate_model.key)
    return CandidateSource(
        collection.vectors(candidate_model),
        lambda row: Path(collection.item(row).item_id),
        collection.name,
        collection.nearest(candidate_model, device),
        collection.row_norm(candidate_model),
        identity=collection.content_key(candidate_model),
        remote=remote,
    )


@dataclass(frozen=True)
class RankedCandidates:
    """The best `top` per query over every source, best first: `values` [N, top] scores, and per
    position which source and row; `certified`/`lower`/`upper` for `topk`; `bank_rows` [N] for
    `caption`."""

    values: torch.Tensor
    source: torch.Tensor  # [N, top] int64 index into the sources
    row: torch.Tensor  # [N, top] int64 row within that source
    total: int  # candidates ranked, over every source
    certified: torch.Tensor | None = None
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None
    bank_rows: torch.Tensor | None = None


def rank_sources(
    method: Method,
    bridge: Bridge,
    queries: np.ndarray,
    sources: Sequence[CandidateSource],
    settings: ScoringSettings,
    top: int | None,
    *,
    chunk_rows: int | None = None,
    on_advance: Callable[[int], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> RankedCandidates:
    """Score every row of every source for each query and keep the best `top` (None: all).

    Exact methods keep exact scores, so the result is the exact top `top`, ties broken by the
    order of the sources and rows. `topk` keeps bounds and certifies the union (module doc).
    `on_advance` hears the rows scored after each chunk, `on_note` one-off work (a collection's
    list bounds being made)."""
    total = sum(len(source) for source in sources)
    if total == 0:
        raise UsageError("no candidates to rank: the collections and files given are empty")
    keep = total if top is None else min(top, total)
    chunk = chunk_rows or default_chunk_rows(len(bridge.candidate_side.bank))
    offsets = np.cumsum([0] + [len(source) for source in sources])
    kept: Leaders | None = None
    bank_rows = None
    for s, source in enumerate(sources):
        if _searchable(method, source, settings):
            found = _search_collection(source, bridge, queries, keep, settings, on_note)
            found = replace(found, ids=found.ids.to(torch.int64) + int(offsets[s]))
            kept = found if kept is None else kept.merged(found, keep)
            if on_advance is not None:
                on_advance(len(source))
            continue
        for start in range(0, len(source), chunk):
            block = np.ascontiguousarray(source.vectors[start : start + chunk], dtype=np.float32)
            scores = method.score(bridge, queries, block, settings, min(keep, len(block)))
            if scores.bank_rows is not None:
                bank_rows = scores.bank_rows
            ids = torch.arange(len(block), dtype=torch.int64) + int(offsets[s]) + start
            fresh = Leaders.of(scores, ids.to(scores.values.device))
            kept = fresh.best(keep) if kept is None else kept.merged(fresh, keep)
            if on_advance is not None:
                on_advance(len(block))
    assert kept is not None
    certified = kept.certify() if kept.lower is not None else None
    flat = kept.ids.cpu().numpy()
    source = np.searchsorted(offsets, flat, side="right") - 1
    row = flat - offsets[source]
    return RankedCandidates(
        values=kept.values,
        source=torch.from_numpy(source.astype(np.int64)),
        row=torch.from_numpy(row.astype(np.int64)),
        total=total,
        certified=certified,
        lower=kept.lower,
        upper=kept.upper,
        bank_rows=bank_rows,
    )


def _search_collection(
    source: CandidateSource,
    bridge: Bridge,
    queries: np.ndarray,
    keep: int,
    settings: ScoringSettings,
    on_note: Callable[[str], None] | None,
) -> Leaders:
    """A collection's certified top `keep` through its index: by the Ray actors holding its
    shards (`--cluster`), or in this process (`collection_search`)."""
    if source.remote is not None:
        return source.remote(bridge, queries, keep, settings)
    from ucl_cli.bridge.collection_search import certified_collection_top

    return certified_collection_top(
        bridge,
        queries,
        source.vectors,
        source.nearest,
        source.row_norm,
        keep,
        settings,
        identity=source.identity,
        on_note=on_note,
    )


def _searchable(method: Method, source: CandidateSource, settings: ScoringSettings) -> bool:
    """Whether a source is searched through its index (`collection_search`) rather than
    streamed: a certifying method, a collection with an index, and no per-candidate normaliser
    (which a row never retrieved would lack)."""
    return (
        method.certifies
        and source.nearest is not None
        and source.row_norm is not None
        and settings.calibration.normalize == "none"
    )


def default_chunk_rows(bank_rows: int) -> int:
    """Candidate rows per chunk: the [bank chunk, candidates] products stay near CHUNK_ELEMENTS
    (the bank side is itself scored BANK_CHUNK rows at a time)."""
    from ucl_cli.bridge.scoring import BANK_CHUNK

    return max(MIN_CHUNK_ROWS, CHUNK_ELEMENTS // max(1, min(bank_rows, BANK_CHUNK)))


@dataclass(frozen=True)
class Leaders:
    """Each query's best candidates so far, in order, with their global ids; for `topk` their
    bounds and `ceiling` [N], the largest upper bound of any candidate dropped so far."""

    values: torch.Tensor  # [N, r]
    ids: torch.Tensor  # [N, r]
    lower: torch.Tensor | None = None
    upper: torch.Tensor | None = None
    ceiling: torch.Tensor | None = None

    @classmethod
    def of(cls, scores, ids: torch.Tensor) -> Leaders:
        n = scores.values.shape[0]
        every = ids.expand(n, -1)
        if scores.lower is None:
            return cls(scores.values, every)
        floor = torch.full((n,), -math.inf, dtype=scores.upper.dtype, device=ids.device)
        return cls(scores.values, every, scores.lower, scores.upper, floor)

    def best(self, keep: int) -> Leaders:
        order = self.values.argsort(dim=1, descending=True, stable=True)
        chosen, dropped = order[:, :keep], order[:, keep:]
        if self.lower is None:
            return Leaders(self.values.gather(1, chosen), self.ids.gather(1, chosen))
        ceiling = self.ceiling
        if dropped.shape[1]:
            ceiling = torch.maximum(ceiling, self.upper.gather(1, dropped).max(dim=1).values)
        return Leaders(
            self.values.gather(1, chosen),
            self.ids.gather(1, chosen),
            self.lower.gather(1, chosen),
            self.upper.gather(1, chosen),
            ceiling,
        )

    def merged(self, other: Leaders, keep: int) -> Leaders:
        """These leaders and `other`'s (later ids: ties keep the earlier) cut to `keep`."""
        both = Leaders(
            torch.cat([self.values, other.values.to(self.values.dtype)], dim=1),
            torch.cat([self.ids, other.ids], dim=1),
        )
        if self.lower is None:
            return both.best(keep)
        both = Leaders(
            both.values,
            both.ids,
            torch.cat([self.lower, other.lower.to(self.lower.dtype)], dim=1),
            torch.cat([self.upper, other.upper.to(self.upper.dtype)], dim=1),
            torch.maximum(self.ceiling, other.ceiling.to(self.ceiling.dtype)),
        )
        return both.best(keep)

    def certify(self) -> torch.Tensor:
        """[N, r]: the positions the kept bounds prove, against each other and against every
        dropped candidate (one more entry below the leaders, bounded above by `ceiling`)."""
        from ucl_cli.estimators.topk import BridgeBounds, certify_ranking

        n = self.values.shape[0]
        below = torch.full((n, 1), -math.inf, dtype=self.lower.dtype, device=self.lower.device)
        lower = torch.cat([self.lower, below], dim=1)
        upper = torch.cat([self.upper, self.ceiling[:, None].to(self.upper.dtype)], dim=1)
        ranking = certify_ranking(BridgeBounds(lower, upper))
        # ranking.certified is per position of ranking.order; give each entry its position's.
        by_entry = torch.zeros_like(ranking.certified).scatter_(
            1, ranking.order, ranking.certified
        )
        return by_entry[:, :-1]


__all__ = [
    "CandidateSource",
    "Leaders",
    "RankedCandidates",
    "collection_source",
    "default_chunk_rows",
    "file_source",
    "rank_sources",
]
