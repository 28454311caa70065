"""Banks: texts (a bridge) or image/audio files (a collection) embedded by models, on disk.

A bank is a directory:

    manifest.json                  format version, ucl version, modality, kind (bridge or
                                   collection), models (key, dim, logit scale, preprocessing),
                                   item count, FAISS index string, dates, and the size and
                                   SHA-256 of every file below
    items.<gen>.jsonl              one JSON object a row: {"id", "text", "key"}
    m<i>-<model>.<gen>.npy         model i's float32 [count, dim] unit-norm rows (memory-mapped)
    m<i>-<model>.<gen>.faiss       model i's FAISS inner-product index over the same rows
    .staging/                      rows embedded but not yet published (crash recovery)
    .lock                          held by the one process writing the bank

Rows are aligned across files. Data files are never modified: publishing writes a new
generation and then replaces `manifest.json` atomically, so readers and crashes only ever see
a complete state. `load_bank` / `save_bank` read and write whole banks; `index_items` streams
a corpus of any size into one; `builtin_bank` is the AudioSet bank `ucl query` falls back on;
`Bank.nearest` (`ucl_cli.bank.nearest`) is the certified search over its FAISS indexes that
`topk` asks of it.
"""

from ucl_cli.bank.builtin import audioset_labels, audioset_texts, builtin_bank, builtin_bank_name
from ucl_cli.bank.catalog import DEFAULT_BANK, BankSummary, list_banks, resolve_bank
from ucl_cli.bank.corpus import CorpusOptions, CorpusRecord, corpus_items, read_corpus
from ucl_cli.bank.file_items import FileItems, collect_file_items
from ucl_cli.bank.indexer import (
    IndexListener,
    IndexOptions,
    IndexReport,
    index_items,
    prune_collection,
)
from ucl_cli.bank.items import BankItem, normalize_text, text_item
from ucl_cli.bank.manifest import FORMAT_VERSION, Manifest, ModelRecord
from ucl_cli.bank.store import Bank, load_bank, save_bank
from ucl_cli.bank.writer import BankWriter, WriterOptions

__all__ = [
    "DEFAULT_BANK",
    "FORMAT_VERSION",
    "Bank",
    "BankItem",
    "BankSummary",
    "BankWriter",
    "CorpusOptions",
    "CorpusRecord",
    "FileItems",
    "IndexListener",
    "IndexOptions",
    "IndexReport",
    "Manifest",
    "ModelRecord",
    "WriterOptions",
    "audioset_labels",
    "audioset_texts",
    "builtin_bank",
    "builtin_bank_name",
    "collect_file_items",
    "corpus_items",
    "index_items",
    "list_banks",
    "load_bank",
    "normalize_text",
    "prune_collection",
    "read_corpus",
    "resolve_bank",
    "save_bank",
    "text_item",
]
