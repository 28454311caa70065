"""The built-in bank: AudioSet's 527 class names, so `ucl query` works before any `ucl index`.

Each name is embedded twice, as "the sound of {name}" and bare (1,054 rows), once per model
pair, and cached under the banks directory as `audioset-<hash of the models>`. The names ship in
`ucl_cli/data/audioset_labels.txt` (CC BY-SA 4.0, see AUDIOSET_LICENSE.md there).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

from ucl_cli.bank.indexer import IndexListener, IndexOptions, index_items
from ucl_cli.bank.items import text_item
from ucl_cli.bank.manifest import MANIFEST_NAME, ModelRecord
from ucl_cli.bank.store import Bank, load_bank
from ucl_cli.config import banks_dir

if TYPE_CHECKING:
    from ucl_cli.encoders.base import Encoder
from ucl_cli.errors import BankError

AUDIOSET_TEMPLATE = "the sound of {name}"
AUDIOSET_CLASSES = 527


def audioset_labels() -> list[str]:
    """AudioSet's class display names, in class index order."""
    path = resources.files("ucl_cli").joinpath("data", "audioset_labels.txt")
    return [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def audioset_texts() -> list[str]:
    """The built-in bank's rows: every name in the template, then every bare name."""
    names = audioset_labels()
    return [AUDIOSET_TEMPLATE.format(name=name) for name in names] + names


def builtin_bank_name(encoders: Sequence[Encoder]) -> str:
    """`audioset-<12 hex>`, one per set of models (key, dim, preprocessing and weights; any
    order): other weights of the same model get a bank of their own."""
    records = sorted(
        (ModelRecord.from_encoder(encoder) for encoder in encoders), key=lambda r: r.key
    )
    identity = [
        [r.key, r.dim, r.preprocessing] + ([r.weights] if r.weights else []) for r in records
    ]
    digest = hashlib.sha256(json.dumps(identity, sort_keys=True, default=str).encode())
    return f"audioset-{digest.hexdigest()[:12]}"


def builtin_bank(
    encoders: Sequence[Encoder],
    *,
    options: IndexOptions | None = None,
    listener: IndexListener | None = None,
    on_build: Callable[[Path, int], None] | None = None,
) -> Bank:
    """The AudioSet bank for these encoders, embedded on first use and cached afterwards.

    `on_build(path, rows)` is called when the bank is about to be embedded (first use, or a
    damaged cache), so that a caller can say what the wait is for; `listener` hears its progress.
    """
    path = banks_dir() / builtin_bank_name(encoders)
    texts = audioset_texts()
    options = replace(options or IndexOptions(), modality="text")
    if (path / MANIFEST_NAME).exists():
        try:
            bank = load_bank(path)
        except BankError:  # a damaged cache is rebuilt, not reported
            options = replace(options, replace=True)
        else:
            if len(bank) == len(texts):
                bank.check_models(encoders)
                return bank
            bank.close()
    if on_build is not None:
        on_build(path, len(texts))
    index_items(path, encoders, (text_item(text) for text in texts), options, listener)
    bank = load_bank(path)
    bank.check_models(encoders)
    return bank
