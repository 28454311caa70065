"""A bank's vectors are the ones that were written, by the weights the query uses, or nothing.

Damage to a published bank (a byte changed in place, zeroed rows, a file swapped under the
manifest) is detected by its checksum before the damaged part is used, also when a query opens
the bank without hashing it all; a manifest cannot name files outside its bank; vectors made by
other weights of the same model are refused, naming both.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from fakes import HashEncoder
from test_query import image_to_audio, index_planted, jsonl, run_query
from typer.testing import CliRunner

import ucl_cli.digests as digests
from ucl_cli.bank import load_bank, save_bank, text_item
from ucl_cli.bank.search_index import read_index
from ucl_cli.cli import app
from ucl_cli.encoders.registry import ModelFiles, weights_id
from ucl_cli.errors import BankError


def small_bank(path: Path, *, weights: tuple[str | None, str | None] = (None, None), rows=40):
    encoders = [HashEncoder(key="fake:clip", dim=16), HashEncoder(key="fake:clap", dim=8)]
    for encoder, identity in zip(encoders, weights, strict=True):
        encoder.weights_id = identity
    texts = [f"caption {i}" for i in range(rows)]
    items = [text_item(text) for text in texts]
    vectors = [encoder.embed("text", texts) for encoder in encoders]
    save_bank(path, items, vectors, encoders, faiss_index="Flat").close()
    return encoders


def manifest_of(path: Path) -> dict:
    return json.loads((path / "manifest.json").read_text())


def flip_byte(path: Path, offset: int) -> None:
    """Change one byte in place, keeping the size (and, as far as a user can, the mtime)."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x5A
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))


# --- same-size damage, found by the files a query reads ---------------------------------------


def test_an_index_changed_in_place_is_refused_when_topk_first_reads_it(tmp_path):
    small_bank(tmp_path / "b")
    index_file = tmp_path / "b" / manifest_of(tmp_path / "b")["models"][1]["index"]
    flip_byte(index_file, index_file.stat().st_size - 7)  # inside the stored vectors
    with load_bank(tmp_path / "b", verify="on_read") as bank:  # opens: sizes and shapes agree
        bank.vectors("fake:clap")  # the other files are fine
        with pytest.raises(BankError, match=rf"is corrupt: {index_file.name} has SHA-256"):
            bank.index("fake:clap")


def test_zeroed_rows_are_refused_when_the_vectors_are_first_read(tmp_path):
    small_bank(tmp_path / "b")
    vectors = tmp_path / "b" / manifest_of(tmp_path / "b")["models"][0]["vectors"]
    data = bytearray(vectors.read_bytes())
    data[-16 * 4 * 3 :] = bytes(16 * 4 * 3)  # the last three rows of dim 16
    vectors.write_bytes(bytes(data))
    bank = load_bank(tmp_path / "b", verify="on_read")  # opens: sizes and shapes agree
    with bank, pytest.raises(BankError, match=rf"is corrupt: {vectors.name} has SHA-256"):
        bank.vectors("fake:clip")


def test_a_verified_file_is_not_read_again_until_it_changes(tmp_path, monkeypatch):
    small_bank(tmp_path / "b")  # the writer records the digests of what it wrote
    reads = []
    real = digests.sha256_fd
    monkeypatch.setattr(digests, "sha256_fd", lambda fd: reads.append(fd) or real(fd))
    for _ in range(2):
        with load_bank(tmp_path / "b", verify="on_read") as bank:
            bank.vectors("fake:clip"), bank.index("fake:clap"), list(bank.items())
        with load_bank(tmp_path / "b") as bank:
            pass
    assert reads == []  # a stat per file, no bytes read
    vectors = tmp_path / "b" / manifest_of(tmp_path / "b")["models"][0]["vectors"]
    flip_byte(vectors, vectors.stat().st_size - 1)  # same size, same mtime: ctime changes
    with pytest.raises(BankError, match="is corrupt"):
        load_bank(tmp_path / "b")
    assert len(reads) == 1


def test_ucl_banks_verify_rereads_whatever_the_memo_says(tmp_path, monkeypatch):
    monkeypatch.setenv("UCL_HOME", str(tmp_path / "home"))
    small_bank(tmp_path / "home" / "banks" / "b")
    result = CliRunner().invoke(app, ["banks", "--verify"])
    assert result.exit_code == 0 and "checksums ok" in result.output


def test_an_index_file_faiss_cannot_parse_is_named_in_one_sentence(tmp_path):
    garbage = tmp_path / "m1.faiss"
    garbage.write_bytes(b"IxF2" + os.urandom(200))
    with pytest.raises(BankError) as err:
        read_index(garbage, "Flat", name="bank b: m1.faiss")
    assert str(err.value).startswith("bank b: m1.faiss is not a readable FAISS index (")
    assert "\n" not in str(err.value)


# --- manifests cannot point outside the bank --------------------------------------------------


@pytest.mark.parametrize("name", ["../outside.npy", "/etc/passwd", "sub/dir.npy", ".hidden", ".."])
@pytest.mark.parametrize("field", ["items", "vectors", "index"])
def test_a_manifest_naming_a_file_outside_the_bank_is_refused(tmp_path, name, field):
    small_bank(tmp_path / "b")
    manifest = manifest_of(tmp_path / "b")
    if field == "items":
        old = manifest["items"]
        manifest["items"] = name
    else:
        old = manifest["models"][0][field]
        manifest["models"][0][field] = name
    manifest["files"][name] = manifest["files"].pop(old)
    (tmp_path / "b" / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BankError) as err:
        load_bank(tmp_path / "b")
    assert "is refused: it names the file" in str(err.value) and "not inside the bank" in str(
        err.value
    )


# --- rows are stored unit norm, and the manifest records their largest norm --------------------


def test_rows_off_unit_norm_are_renormalised_and_the_largest_norm_recorded(tmp_path):
    encoders = [HashEncoder(key="fake:clip", dim=16), HashEncoder(key="fake:clap", dim=8)]
    texts = [f"caption {i}" for i in range(10)]
    vectors = [encoder.embed("text", texts) for encoder in encoders]
    vectors[0] = vectors[0] * np.float32(1.0009)  # accepted (within 1e-3), but not unit
    save_bank(tmp_path / "b", [text_item(t) for t in texts], vectors, encoders).close()
    with load_bank(tmp_path / "b") as bank:
        norms = np.linalg.norm(bank.vectors("fake:clip").astype(np.float64), axis=1)
        assert np.abs(norms - 1).max() < 1e-6
        assert norms.max() <= bank.row_norm("fake:clip") < 1 + 1e-6
    assert all(model["max_norm"] >= 1 for model in manifest_of(tmp_path / "b")["models"])


# --- vectors are keyed by the weights that made them ------------------------------------------


def test_weights_are_identified_by_their_content(tmp_path, monkeypatch):
    # Files this young are normally read again until they are 2 s old (a same-size rewrite in
    # the clock tick would be invisible to stat); the test does not wait for that.
    monkeypatch.setattr(digests, "RACY_WINDOW_NS", 0)
    a, b, copy = tmp_path / "a.safetensors", tmp_path / "b.safetensors", tmp_path / "c.bin"
    a.write_bytes(b"weights one")
    b.write_bytes(b"weights two")
    copy.write_bytes(b"weights one")
    ids = [weights_id(ModelFiles(weights=path, assets={})) for path in (a, b, copy)]
    assert ids[0] != ids[1] and ids[0] == ids[2] and ids[0].startswith("sha256:")
    # Memoised by path and stat: the second time reads nothing; a changed file is read again.
    with monkeypatch.context() as patch:
        patch.setattr(digests, "sha256_file", lambda path: pytest.fail("read again"))
        assert weights_id(ModelFiles(weights=a, assets={})) == ids[0]
    a.write_bytes(b"weights six")
    assert weights_id(ModelFiles(weights=a, assets={})) not in ids


def test_a_hub_blob_is_identified_by_its_name_without_reading_it(tmp_path, monkeypatch):
    digest = "ab" * 32
    blob = tmp_path / "blobs" / digest
    blob.parent.mkdir()
    blob.write_bytes(b"not read")
    link = tmp_path / "snapshots" / "0" / "open_clip_model.safetensors"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    with monkeypatch.context() as patch:
        patch.setattr(digests, "sha256_file", lambda path: pytest.fail("read"))
        assert weights_id(ModelFiles(weights=link, assets={})) == f"sha256:{digest}"
    # A file copied into the snapshot (no symlinks): its content decides, not its name.
    copy = tmp_path / "snapshots" / "1" / "open_clip_model.safetensors"
    copy.parent.mkdir(parents=True)
    copy.write_bytes(b"not read")
    assert weights_id(ModelFiles(weights=copy, assets={})) != f"sha256:{digest}"


def test_a_bank_of_other_weights_is_refused_naming_both(tmp_path):
    small_bank(tmp_path / "b", weights=("sha256:" + "1" * 64, "sha256:" + "2" * 64))
    query_encoders = [HashEncoder(key="fake:clip", dim=16), HashEncoder(key="fake:clap", dim=8)]
    query_encoders[0].weights_id = "sha256:" + "1" * 64
    query_encoders[1].weights_id = "sha256:" + "3" * 64
    with load_bank(tmp_path / "b", verify="on_read") as bank, pytest.raises(BankError) as err:
        bank.check_models(query_encoders)
    assert str(err.value) == (
        f"bank b was built with fake:clap weights sha256:{'2' * 12}…; the query's encoder has "
        f"weights sha256:{'3' * 12}… (other weights give other vectors: rebuild the bank, or "
        "pass --allow-other-weights to use it anyway)"
    )
    with load_bank(tmp_path / "b", verify="on_read", check_weights=False) as bank:
        bank.check_models(query_encoders)


def test_query_refuses_a_bank_of_other_weights_unless_allowed(
    plugin,
    tmp_path,
    media_dir,
    monkeypatch,
):
    runner = CliRunner()
    monkeypatch.setenv("UCL_TEST_PLANTED_WEIGHTS", "sha256:" + "a" * 64)
    index_planted(runner, tmp_path / "corpus.txt", ["concept 0", "concept 1"], "w")
    monkeypatch.setenv("UCL_TEST_PLANTED_WEIGHTS", "sha256:" + "b" * 64)
    refused = run_query(runner, *image_to_audio(media_dir, "w", 1))
    assert refused.exit_code == 1
    assert f"weights sha256:{'a' * 12}…; the query's encoder has weights sha256:{'b' * 12}…" in (
        refused.stderr
    )
    allowed = run_query(runner, *image_to_audio(media_dir, "w", 1), "--allow-other-weights")
    assert allowed.exit_code == 0, allowed.output
    assert jsonl(allowed)[0]["candidate"].endswith("concept1.wav")


def test_a_query_reading_a_damaged_bank_fails_in_one_line(plugin, tmp_path, media_dir):
    runner = CliRunner()
    index_planted(runner, tmp_path / "corpus.txt", ["concept 0", "concept 1", "other"], "d")
    bank_dir = Path(os.environ["UCL_HOME"]) / "banks" / "d"
    vectors = bank_dir / manifest_of(bank_dir)["models"][1]["vectors"]
    flip_byte(vectors, vectors.stat().st_size - 2)
    result = run_query(runner, *image_to_audio(media_dir, "d", 1))
    assert result.exit_code == 1
    assert f"is corrupt: {vectors.name} has SHA-256" in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 2 and "Traceback" not in result.stderr


def test_a_bank_that_records_no_weights_is_used_with_a_warning(
    plugin,
    tmp_path,
    media_dir,
    monkeypatch,
):
    runner = CliRunner()
    monkeypatch.delenv("UCL_TEST_PLANTED_WEIGHTS", raising=False)
    index_planted(runner, tmp_path / "corpus.txt", ["concept 0", "concept 1"], "old")
    quiet = run_query(runner, *image_to_audio(media_dir, "old", 1))  # nothing to compare
    assert quiet.exit_code == 0 and "weights" not in quiet.stderr
    monkeypatch.setenv("UCL_TEST_PLANTED_WEIGHTS", "sha256:" + "c" * 64)
    warned = run_query(runner, *image_to_audio(media_dir, "old", 1))
    assert warned.exit_code == 0, warned.output
    assert "bank old does not record which weights made its planted:image-text" in warned.stderr
