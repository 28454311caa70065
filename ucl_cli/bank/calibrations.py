"""A bank's stored calibrations: the temperatures and normalisation its queries use by default.

`ucl calibrate` chooses them on paired data (`ucl_cli.evaluation.cross_validation`) and
stores one entry per direction ("image->audio", "audio->image") in `<bank>/calibration.json`,
beside the manifest, with the evidence it was chosen on (the pairs file's checksum, the
held-out recall of the choice and of the paper's estimator). The file is written atomically
under the bank's writer lock, and `ucl index` leaves it in place.

A calibration belongs to what it was measured on, so `applicable_calibration` applies an entry
only while that still holds:
- the bank's rows are the ones it was fit on (`content_fingerprint`: the checksums of the items
  and vector files), so after `ucl index` adds or removes rows the entry is stale;
- the query and candidate models are the ones it was fit with (key, weights, preprocessing and
  logit scale: a temperature is a factor on that scale).
Anything else (a damaged file, a stale entry) leaves the paper's estimator in force, with a note
that says why: a stored default must never make a query fail or silently change its meaning.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ucl_cli.bank.lock import BankLock
from ucl_cli.bank.manifest import Manifest, ModelRecord, now_iso
from ucl_cli.calibration import Calibration
from ucl_cli.errors import UclError
from ucl_cli.files import atomic_write_json

if TYPE_CHECKING:
    from ucl_cli.bank.store import Bank
    from ucl_cli.encoders.base import Encoder

CALIBRATION_FILE = "calibration.json"
FORMAT_NAME = "ucl-bank-calibration"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class StoredCalibration:
    """One direction's calibration and what it was chosen on.

    direction: "image->audio" or "audio->image" (query side first).
    query_model, candidate_model: the models whose logit scales the temperatures multiply.
    bank_rows, bank_content: the bank it was fit on (`content_fingerprint`).
    pairs: {"path", "sha256", "items"} of the paired file; held_out: the cross-validated
      numbers ({"recall@1": {"chosen": x, "paper": y}, ...}); fit: how it was chosen (folds,
      trials, candidates, seed, selection criterion, grid size).
    """

    direction: str
    calibration: Calibration
    query_model: ModelRecord
    candidate_model: ModelRecord
    bank_rows: int
    bank_content: str
    pairs: dict[str, Any] = field(default_factory=dict)
    held_out: dict[str, Any] = field(default_factory=dict)
    fit: dict[str, Any] = field(default_factory=dict)
    created: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "calibration": self.calibration.to_json(),
            "query_model": self.query_model.to_json(),
            "candidate_model": self.candidate_model.to_json(),
            "bank_rows": self.bank_rows,
            "bank_content": self.bank_content,
            "pairs": self.pairs,
            "held_out": self.held_out,
            "fit": self.fit,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, direction: str, value: dict[str, Any]) -> StoredCalibration:
        settings = value["calibration"]
        t1, t2 = (float(t) for t in settings["temperature"])
        return cls(
            direction=direction,
            calibration=Calibration(t1, t2, str(settings["normalize"])),
            query_model=ModelRecord.from_json(value["query_model"]),
            candidate_model=ModelRecord.from_json(value["candidate_model"]),
            bank_rows=int(value["bank_rows"]),
            bank_content=str(value["bank_content"]),
            pairs=dict(value.get("pairs") or {}),
            held_out=dict(value.get("held_out") or {}),
            fit=dict(value.get("fit") or {}),
            created=str(value.get("created", "")),
        )

    def evidence(self) -> str:
        """The held-out comparison in a few words: "held-out recall@1 0.62 vs 0.55 for the
        paper's estimator, on pairs.csv"."""
        recall = self.held_out.get("recall@1") or {}
        if "pseudo_pairs" in self.pairs:
            name = f"{self.pairs['pseudo_pairs']:,} pseudo-pairs of bank texts (no labels)"
        else:
            name = Path(str(self.pairs.get("path", "paired data"))).name
        if "chosen" not in recall or "paper" not in recall:
            return f"fit on {name}"
        return (
            f"held-out recall@1 {recall['chosen']:.3f} vs {recall['paper']:.3f} for the paper's "
            f"estimator, on {name}"
        )


@dataclass(frozen=True)
class Applicable:
    """What a query should use: `stored` (None: the paper's estimator) and, when an entry
    exists but cannot be used, `note` saying why."""

    stored: StoredCalibration | None = None
    note: str | None = None


def content_fingerprint(manifest: Manifest) -> str:
    """The checksum of a bank's rows: its items and vector files (not its FAISS indexes, which
    do not change a score). Any row added, removed or changed changes it."""
    names = [manifest.items_file, *manifest.vector_files]
    digest = hashlib.sha256()
    for name in names:
        record = manifest.files.get(name)
        digest.update(f"{name}={record.sha256 if record else '-'}\n".encode())
    return "sha256:" + digest.hexdigest()


def read_calibrations(bank_dir: Path) -> dict[str, StoredCalibration]:
    """direction -> entry; {} when the bank has none. A damaged file raises UclError naming
    it (`applicable_calibration` turns that into a note)."""
    path = bank_dir / CALIBRATION_FILE
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as err:
        raise UclError(f"cannot read {path}: {err}") from None
    try:
        value = json.loads(text)
        if not isinstance(value, dict) or value.get("format") != FORMAT_NAME:
            raise ValueError(f'no "format": "{FORMAT_NAME}"')
        if int(value.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"format version {value['format_version']} is newer than this ucl")
        return {
            direction: StoredCalibration.from_json(direction, entry)
            for direction, entry in value["directions"].items()
        }
    except (ValueError, KeyError, TypeError, UclError) as err:
        raise UclError(f"{path} is damaged ({err}); run ucl calibrate again") from None


def store_calibration(bank_dir: Path, entry: StoredCalibration) -> Path:
    """Add or replace `entry`'s direction in the bank's calibration file (other directions
    stay), atomically, under the bank's writer lock."""
    path = bank_dir / CALIBRATION_FILE
    with BankLock(bank_dir):
        try:
            entries = read_calibrations(bank_dir)
        except UclError:
            entries = {}  # a damaged file is replaced whole
        entries[entry.direction] = entry
        atomic_write_json(
            path,
            {
                "format": FORMAT_NAME,
                "format_version": FORMAT_VERSION,
                "updated": now_iso(),
                "directions": {d: e.to_json() for d, e in sorted(entries.items())},
            },
        )
    return path


def applicable_calibration(
    bank: Bank, direction: str, query_model: Encoder, candidate_model: Encoder
) -> Applicable:
    """The bank's calibration for `direction` if it still fits this bank and these models."""
    try:
        entries = read_calibrations(bank.path)
    except UclError as err:
        return Applicable(note=f"{err}; using the paper's estimator")
    entry = entries.get(direction)
    if entry is None:
        return Applicable()
    if entry.bank_content != content_fingerprint(bank.manifest):
        return Applicable(
            note=f"bank {bank.name}'s calibration for {direction} was fit on its earlier "
            f"{entry.bank_rows:,} rows and the bank has changed since; using the paper's "
            "estimator (run ucl calibrate again)"
        )
    for side, record, encoder in (
        ("query", entry.query_model, query_model),
        ("candidate", entry.candidate_model, candidate_model),
    ):
        now = ModelRecord.from_encoder(encoder)
        if not now.same_vectors_as(record) or now.logit_scale != record.logit_scale:
            return Applicable(
                note=f"bank {bank.name}'s calibration for {direction} was fit with the {side} "
                f"model {record.key}, not this {now.key} (or other weights); using the paper's "
                "estimator"
            )
    return Applicable(stored=entry)


__all__ = [
    "CALIBRATION_FILE",
    "Applicable",
    "StoredCalibration",
    "applicable_calibration",
    "content_fingerprint",
    "read_calibrations",
    "store_calibration",
]
