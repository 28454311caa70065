"""Scoring over a bank's shards on a Ray cluster (`ucl query --cluster`, `ucl eval --cluster`),
and indexing into them (`ucl index --cluster`).

The bridge sum is a logsumexp over bank rows, so it decomposes exactly over any split of the
rows; candidates are independent, so a collection splits over its rows too. Ray actors hold a
run's shards, and the driver (the `ucl` process) holds none of a bridge bank's rows: each
method sends its work to the actors as a request, and combines every shard's answer into the
one-process result. A result is never computed over part of the bank.

One concept per module:
- `cluster`: what `--cluster` / UCL_CLUSTER name, and connecting to it (Ray imported there only).
- `actor`: the Ray actor that holds shards and answers requests over them (`ShardHost.run`).
- `placement`: which actor holds which shards, and where a dead actor's shards go.
- `driver`: the driver side: the run's actors (`ActorPool`), each bank's shards on them
  (`ClusterScorer`), sending a request, retrying and reassigning it, gathering the answers.
- `rows`: the driver's handle on a bank the cluster holds (`RemoteRows`, `RemoteBridge`).
- The requests, one per method: `partials` (lse), `bridge_topk` (topk's bounds, per round),
  `captions` (caption), `explanations` (`--explain`), each a `bridge_request.BridgeRequest`
  (what they all carry), and `collection_tops` (a collection's certified top candidates).
- `indexing`: distributed embedding into a sharded bank with Ray Data.

Importing this package imports neither Ray nor torch: `ucl --help` and in-process queries stay
as fast as they were.
"""
