"""Write RANDOM-WEIGHT stand-ins of the default models into a hub-cache layout at DIR.

    python scripts/make_test_models.py DIR [--small] [--model KEY ...]
    HF_HOME=DIR ucl ...            # or HF_HUB_CACHE=DIR/hub: every command now works offline

The stand-ins have the real models' architectures and file names (CLIP ViT-B-32 in
laion/CLIP-ViT-B-32-laion2B-s34B-b79K, LAION-CLAP HTSAT-tiny `630k-audioset-best.pt` in
lukewys/laion_clap, and roberta-base's config.json, vocab.json and merges.txt) but random weights
and a tiny stand-in tokenizer for roberta-base (a byte-level BPE trained on a few sentences), so
their embeddings mean nothing: they exist for tests, benchmarks and demos on machines that cannot
download the real weights. `--small` writes much smaller configs of the same families (1-layer
towers) that load through the same code; the tests use those.

Nothing is downloaded. Every file carries a stand-in mark that survives copying the cache, so
`ucl doctor`, `ucl models` and every command that loads these models warn "random weights:
rankings are meaningless". Output (the files written) goes to stderr. See
ucl_cli/testing/standins.py for the layout.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here needs the network
if importlib.util.find_spec("ucl_cli") is None:  # run from a checkout that was not pip-installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", type=Path, help="folder to write (use it as HF_HOME)")
    parser.add_argument("--small", action="store_true", help="much smaller configs, for tests")
    parser.add_argument(
        "--model",
        action="append",
        dest="keys",
        metavar="KEY",
        help="a clip: or clap: key of the registry (repeatable; default: the two default models)",
    )
    args = parser.parse_args(argv)

    from ucl_cli.errors import UclError
    from ucl_cli.testing.standins import STANDIN_NOTE, write_defaults

    start = time.perf_counter()
    try:
        written = write_defaults(args.root, small=args.small, keys=tuple(args.keys or ()) or None)
    except (UclError, ValueError) as err:
        print(f"make_test_models: error: {err}", file=sys.stderr)
        return 1
    # Everything goes to stderr: this is a report on a side job, and a demo's stdout is its
    # results.
    for item in written:
        size = item.path.stat().st_size
        print(f"{item.repo}/{item.filename}\t{size / 1e6:.1f} MB\t{item.path}", file=sys.stderr)
    print(
        f"\n{STANDIN_NOTE}.\nThese models have RANDOM weights and a stand-in tokenizer: their "
        f"embeddings are meaningless.\nUse them with HF_HOME={args.root} "
        f"(or HF_HUB_CACHE={args.root / 'hub'}). Written in {time.perf_counter() - start:.0f} s.",
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
