"""Scoring a bank's shards on a Ray cluster (`ucl query --cluster`, `ucl eval --cluster`).

The bridge sum is a logsumexp over bank rows, so it decomposes exactly over any split of the
rows (`ucl_cli.estimators.bridge.partial_bridge_scores`). Here each Ray actor holds some of a
bank's shards and returns, for the queries' and candidates' embeddings the driver sends it, the
partial sums over its shards' rows; the driver combines every shard's partial sum into the
scores (`combine_calibrated`), and refuses to return a score when any shard's is missing.

One concept per module:
- `cluster`: what `--cluster` / UCL_CLUSTER name, and connecting to it (Ray imported there only).
- `partials`: a shard's partial sums (torch; no Ray), what an actor computes.
- `actor`: the Ray actor that holds shards and computes their partial sums.
- `placement`: which actor holds which shards, and where a dead actor's shards go.
- `driver`: the driver side: sending the work, retrying and reassigning it, combining it.
- `rows`: how a query pipeline hands its lse sum to the cluster (`ClusterBank`).

Importing this package imports neither Ray nor torch: `ucl --help` and in-process queries stay
as fast as they were.
"""
