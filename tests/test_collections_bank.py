"""Collections, the bank side: banks of image or audio files embedded only by the models that
embed them, whose rows follow moved files and can be pruned of deleted ones."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from fakes import HashEncoder
from media_samples import ALSA_SOUNDS, FREEDESKTOP_SOUNDS, sample
from typer.testing import CliRunner

import ucl_cli.commands._shared as shared
from ucl_cli.bank import (
    IndexOptions,
    ModelRecord,
    index_items,
    load_bank,
    prune_collection,
    save_bank,
    text_item,
)
from ucl_cli.bank.items import BankItem, file_key
from ucl_cli.bank.manifest import read_manifest
from ucl_cli.bank.writer import BankWriter, WriterOptions
from ucl_cli.cli import app
from ucl_cli.config import banks_dir
from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO
from ucl_cli.errors import BankError, UsageError
from ucl_cli.media import loader_for

runner = CliRunner()
SOUNDS = ("Front_Center.wav", "bell.oga", "camera-shutter.oga")


def ucl(*args: object):
    return runner.invoke(app, [str(arg) for arg in args])


def said(result) -> str:
    """stderr with line wrapping undone."""
    return " ".join(result.stderr.split())


@pytest.fixture
def library(tmp_path) -> Path:
    """A folder of three real sound files (copies, so that tests may move and delete them)."""
    folder = tmp_path / "library"
    folder.mkdir()
    for name in SOUNDS:
        root = ALSA_SOUNDS if name.endswith(".wav") else FREEDESKTOP_SOUNDS
        shutil.copy(sample(root / name), folder / name)
    return folder


@pytest.fixture
def standins(monkeypatch, clip_encoder, clap_encoder):
    """`ucl` loads the small random-weight stand-ins of the default pair (CLIP: image and text;
    CLAP: audio and text); returns the keys loaded and the batch sizes CLAP embedded audio in."""
    by_key = {clip_encoder.key: clip_encoder, clap_encoder.key: clap_encoder}
    record: dict[str, list] = {"loaded": [], "embedded": []}

    def load_encoder(key: str, *, device: str, weights: Path | None = None):
        record["loaded"].append(key)
        return by_key[key]

    real_embed = clap_encoder.embed

    def embed(modality, items, **kwargs):
        if str(getattr(modality, "value", modality)) == "audio":
            record["embedded"].append(len(items))
        return real_embed(modality, items, **kwargs)

    monkeypatch.setattr(shared, "load_encoder", load_encoder)
    monkeypatch.setattr(clap_encoder, "embed", embed)
    return record


@pytest.fixture
def fakes(monkeypatch):
    """Every key loads a HashEncoder; keys with "image-only" embed only images and texts."""
    loaded: list[str] = []

    def load_encoder(key: str, *, device: str, weights: Path | None = None):
        loaded.append(key)
        modalities = ("text", "image") if "image-only" in key else ("text", "image", "audio")
        return HashEncoder(key=key, dim=8, modalities=modalities)

    monkeypatch.setattr(shared, "load_encoder", load_encoder)
    monkeypatch.setattr(shared, "default_model_keys", lambda: ("fake:clip", "fake:clap"))
    return loaded


def rows_by_key(bank_dir: Path) -> dict[str, tuple[BankItem, np.ndarray]]:
    """Each row's item and its CLAP vector, by content key (checks the bank as it opens it)."""
    with load_bank(bank_dir, verify="now") as bank:
        vectors = np.array(bank.vectors(DEFAULT_TEXT_AUDIO))
        return {item.key: (item, vectors[row]) for row, item in enumerate(bank.items())}


def test_an_audio_collection_is_embedded_by_the_audio_model_alone(library, standins, clap_encoder):
    result = ucl("index", "--modality", "audio", library, "--bank", "sfx", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert standins["loaded"] == [DEFAULT_TEXT_AUDIO]  # CLIP has no audio tower: never loaded
    assert (
        f"ucl: the audio collection is embedded by {DEFAULT_TEXT_AUDIO} "
        f"({DEFAULT_IMAGE_TEXT} cannot embed audio)"
    ) in said(result)
    assert "bank sfx: added 3 items; 3 items in total (" in said(result)
    manifest = json.loads((banks_dir() / "sfx" / "manifest.json").read_text())
    assert manifest["kind"] == "collection" and manifest["modality"] == "audio"
    assert [model["key"] for model in manifest["models"]] == [DEFAULT_TEXT_AUDIO]

    load = loader_for("audio", clap_encoder.preprocessing)
    paths = sorted(library.iterdir())
    expected = clap_encoder.embed("audio", [load(path) for path in paths])
    with load_bank(banks_dir() / "sfx") as bank:
        assert bank.kind == "collection" and len(bank) == 3
        items = list(bank.items())
        order = [paths.index(Path(item.item_id)) for item in items]
        assert sorted(order) == [0, 1, 2]
        assert [item.key for item in items] == [file_key(paths[n]) for n in order]
        np.testing.assert_allclose(bank.vectors(DEFAULT_TEXT_AUDIO), expected[order], atol=1e-5)

    listed = [json.loads(line) for line in ucl("banks", "--format", "jsonl").stdout.splitlines()]
    assert [(r["name"], r["kind"], r["modality"], r["items"]) for r in listed] == [
        ("sfx", "collection", "audio", 3)
    ]


def test_appending_embeds_only_the_new_files(library, standins, tmp_path):
    assert ucl("index", "--modality", "audio", library, "-b", "sfx").exit_code == 0
    shutil.copy(sample(FREEDESKTOP_SOUNDS / "complete.oga"), library / "complete.oga")
    standins["loaded"].clear()
    standins["embedded"].clear()
    result = ucl("index", "--modality", "audio", library, "-b", "sfx")
    assert result.exit_code == 0, result.output
    assert standins["loaded"] == [DEFAULT_TEXT_AUDIO]  # the bank's one model
    assert standins["embedded"] == [1]
    assert "added 1 item, skipped 3 already in the bank; 4 items in total" in said(result)
    rows = rows_by_key(banks_dir() / "sfx")
    assert rows[file_key(library / "complete.oga")][0].text == str(library / "complete.oga")


def test_a_moved_file_keeps_its_row_and_a_copy_stays_a_duplicate(library, standins, tmp_path):
    assert ucl("index", "--modality", "audio", library, "-b", "sfx").exit_code == 0
    before = rows_by_key(banks_dir() / "sfx")
    generation = read_manifest(banks_dir() / "sfx").generation
    (library / "sub").mkdir()
    moved = library / "sub" / "renamed.wav"
    (library / "Front_Center.wav").rename(moved)
    shutil.copy(library / "bell.oga", library / "bell copy.oga")  # bell.oga is still there
    standins["embedded"].clear()

    result = ucl("index", "--modality", "audio", library, "-b", "sfx")
    assert result.exit_code == 0, result.output
    assert standins["embedded"] == []  # nothing embedded again
    assert (
        "bank sfx: added 0 items, updated 1 moved file's path, skipped 3 already in the bank; "
        "3 items in total"
    ) in said(result)
    after = rows_by_key(banks_dir() / "sfx")
    assert read_manifest(banks_dir() / "sfx").generation == generation + 1
    key = file_key(moved)
    item, vector = after[key]
    assert (item.item_id, item.text) == (str(moved.resolve()), str(moved))
    np.testing.assert_array_equal(vector, before[key][1])
    bell = after[file_key(library / "bell.oga")][0]
    assert bell.item_id == str((library / "bell.oga").resolve())  # the copy did not take it
    assert after.keys() == before.keys()

    result = ucl("index", "--modality", "audio", library, "-b", "sfx")  # nothing changed now
    assert "added 0 items, skipped 4 already in the bank; 3 items in total" in said(result)
    assert read_manifest(banks_dir() / "sfx").generation == generation + 1


def test_a_file_overwritten_with_new_content_replaces_its_row(library, standins):
    """The old row describes bytes no longer at its path: a hit on it would name a file it does
    not match. Re-indexing the library drops it (no --prune needed) and embeds the new bytes."""
    assert ucl("index", "--modality", "audio", library, "-b", "sfx").exit_code == 0
    old_key = file_key(library / "bell.oga")
    shutil.copy(sample(FREEDESKTOP_SOUNDS / "complete.oga"), library / "bell.oga")
    standins["embedded"].clear()
    result = ucl("index", "--modality", "audio", library, "-b", "sfx")
    assert result.exit_code == 0, result.output
    assert standins["embedded"] == [1]
    assert (
        "added 1 item, dropped the old row of 1 overwritten file, skipped 2 already in the bank; "
        "3 items in total"
    ) in said(result)
    rows = rows_by_key(banks_dir() / "sfx")
    assert old_key not in rows
    item, _ = rows[file_key(library / "bell.oga")]
    assert item.item_id == str((library / "bell.oga").resolve())
    assert sorted(Path(item.item_id).name for item, _ in rows.values()) == sorted(SOUNDS)


@pytest.mark.parametrize("copy_first", [True, False], ids=["copy read first", "copy read last"])
def test_an_overwritten_files_old_content_kept_elsewhere_moves_its_row_there(
    library, standins, copy_first
):
    """bell.oga copied to another name, then overwritten: the old row follows its bytes to the
    copy, whichever of the two files the run reads first, and nothing is embedded twice."""
    assert ucl("index", "--modality", "audio", library, "-b", "sfx").exit_code == 0
    before = rows_by_key(banks_dir() / "sfx")
    old_key = file_key(library / "bell.oga")
    copy = library / ("a bell.oga" if copy_first else "z bell.oga")  # the walk reads by name
    shutil.copy(library / "bell.oga", copy)
    shutil.copy(sample(FREEDESKTOP_SOUNDS / "complete.oga"), library / "bell.oga")
    standins["embedded"].clear()
    result = ucl("index", "--modality", "audio", library, "-b", "sfx")
    assert result.exit_code == 0, result.output
    assert standins["embedded"] == [1]  # only the new bytes of bell.oga
    rows = rows_by_key(banks_dir() / "sfx")
    item, vector = rows[old_key]
    assert item.item_id == str(copy.resolve())
    np.testing.assert_array_equal(vector, before[old_key][1])
    assert rows[file_key(library / "bell.oga")][0].item_id == str((library / "bell.oga").resolve())
    assert len(rows) == 4


def test_prune_drops_the_rows_of_deleted_files_and_keeps_the_others(library, standins):
    assert ucl("index", "--modality", "audio", library, "-b", "sfx").exit_code == 0
    before = rows_by_key(banks_dir() / "sfx")
    gone = file_key(library / "bell.oga")
    (library / "bell.oga").unlink()
    standins["loaded"].clear()

    result = ucl("index", "--prune", "--bank", "sfx")
    assert result.exit_code == 0, result.output
    assert standins["loaded"] == []  # pruning alone loads no model
    assert "bank sfx: removed 1 row whose file is gone; 2 items in total (" in said(result)
    after = rows_by_key(banks_dir() / "sfx")  # verify="now": every checksum holds
    assert set(after) == set(before) - {gone}
    for key, (item, vector) in after.items():
        assert item == before[key][0]
        np.testing.assert_array_equal(vector, before[key][1])
    with load_bank(banks_dir() / "sfx") as bank:
        vectors = bank.vectors(DEFAULT_TEXT_AUDIO)
        assert bank.index(DEFAULT_TEXT_AUDIO).ntotal == 2
        for row, item in enumerate(bank.items()):
            assert item.key == file_key(Path(item.item_id))  # rows stay aligned with files
            _, rows = bank.search(DEFAULT_TEXT_AUDIO, np.array(vectors[row : row + 1]), 1)
            assert rows[0, 0] == row
    assert "checksums ok" in ucl("banks", "--verify", "--format", "table").stdout

    result = ucl("index", "--prune", "--bank", "sfx")
    assert "bank sfx: removed 0 rows whose files are gone; 2 items in total" in said(result)


def test_prune_with_sources_adds_new_files_and_drops_deleted_ones(library, standins):
    assert ucl("index", "--modality", "audio", library, "-b", "sfx").exit_code == 0
    (library / "camera-shutter.oga").unlink()
    shutil.copy(sample(FREEDESKTOP_SOUNDS / "complete.oga"), library / "complete.oga")
    result = ucl("index", library, "-b", "sfx", "--prune")  # --prune: the bank's modality
    assert result.exit_code == 0, result.output
    assert (
        "added 1 item, removed 1 row whose file is gone, skipped 2 already in the bank; "
        "3 items in total"
    ) in said(result)
    names = sorted(Path(item.item_id).name for item, _ in rows_by_key(banks_dir() / "sfx").values())
    assert names == ["Front_Center.wav", "bell.oga", "complete.oga"]


def test_prune_is_refused_for_a_text_bank(tmp_path, fakes):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a dog barks\nrain\n")
    assert ucl("index", corpus, "-b", "captions").exit_code == 0
    assert read_manifest(banks_dir() / "captions").kind == "bridge"
    fakes.clear()
    for args in (["--prune"], [corpus, "--prune"], ["--prune", "--modality", "text"]):
        result = ucl("index", *args, "-b", "captions")
        assert result.exit_code == 2, result.output
        assert said(result) == (
            "ucl: error: --prune drops the rows of deleted files from a collection (a bank of "
            "image or audio files); bank captions holds texts, which have no files to prune"
        )
    assert fakes == []
    sound = shutil.copy(sample(ALSA_SOUNDS / "Front_Center.wav"), tmp_path / "a.wav")
    result = ucl("index", "--modality", "audio", sound, "-b", "captions")
    assert result.exit_code == 1
    assert f"bank {banks_dir() / 'captions'} holds text rows (bridge); this run indexes audio" in (
        said(result)
    )
    with pytest.raises(UsageError, match="a bank of texts has no files to prune"):
        prune_collection(banks_dir() / "captions")
    result = ucl("index", "--prune", "-b", "nothing-here")
    assert result.exit_code == 1 and "no bank at" in said(result)
    result = ucl("index", "-b", "captions")
    assert result.exit_code == 2 and "nothing to index" in said(result)


def test_a_model_that_cannot_embed_the_collection_alone_is_a_clear_error(library, standins):
    result = ucl(
        "index", "--modality", "audio", library, "-b", "x", "--text-audio-model", DEFAULT_IMAGE_TEXT
    )
    assert result.exit_code == 2, result.output
    assert said(result) == (
        f"ucl: error: {DEFAULT_IMAGE_TEXT} cannot embed audio, so no model here can index a "
        "collection of audio files; name one that does with --text-audio-model"
    )
    assert standins["loaded"] == []  # the registry says so before anything loads
    assert not (banks_dir() / "x").exists()


def test_models_unknown_to_the_registry_are_asked_once_loaded(library, fakes, tmp_path):
    args = ["index", "--modality", "audio", library, "-b", "y"]
    result = ucl(*args, "--image-text-model", "fake:image-only", "--text-audio-model", "fake:a")
    assert result.exit_code == 0, result.output
    assert fakes == ["fake:image-only", "fake:a"]
    assert "embedded by fake:a (fake:image-only cannot embed audio)" in said(result)
    assert read_manifest(banks_dir() / "y").model_keys() == ["fake:a"]
    result = ucl(
        *args, "--image-text-model", "fake:image-only", "--text-audio-model", "fake:image-only2"
    )
    assert result.exit_code == 2
    assert "fake:image-only and fake:image-only2 cannot embed audio" in said(result)
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    from PIL import Image

    Image.new("RGB", (8, 8), (200, 0, 0)).save(pictures / "red.png")
    result = ucl("index", "--modality", "image", pictures, "-b", "pics")
    assert result.exit_code == 0, result.output
    assert "the image collection is embedded by fake:clip and fake:clap" in said(result)
    assert read_manifest(banks_dir() / "pics").kind == "collection"


def test_a_manifest_without_kind_reads_as_its_modalitys_kind(tmp_path):
    model = HashEncoder(key="fake:a", dim=4)
    texts = ["one", "two"]
    save_bank(tmp_path / "t", [text_item(t) for t in texts], [model.embed("text", texts)], [model])
    items = [BankItem(item_id=f"/x/{n}.wav", text=f"{n}.wav", key=f"{n:016x}") for n in (1, 2)]
    vectors = model.embed("text", ["a", "b"])  # any unit rows
    save_bank(tmp_path / "a", items, [vectors], [model], modality="audio")
    for name, kind in (("t", "bridge"), ("a", "collection")):
        path = tmp_path / name / "manifest.json"
        value = json.loads(path.read_text())
        assert value.pop("kind") == kind
        path.write_text(json.dumps(value))  # as a bank written before kinds existed
        assert read_manifest(tmp_path / name).kind == kind
        with load_bank(tmp_path / name, verify="now") as bank:
            assert bank.kind == kind
        value["kind"] = "playlist"
        path.write_text(json.dumps(value))
        with pytest.raises(BankError, match="malformed field kind 'playlist'"):
            read_manifest(tmp_path / name)


def test_the_writer_drops_published_and_staged_rows_in_one_publish(tmp_path):
    model = HashEncoder(key="fake:a", dim=4)
    record = ModelRecord.from_encoder(model)
    texts = [f"t{n}" for n in range(5)]
    index_items(tmp_path / "b", [model], [text_item(t) for t in texts[:3]])
    with BankWriter(tmp_path / "b", [record], WriterOptions()) as writer:
        writer.add([text_item(t) for t in texts[3:]], [model.embed("text", texts[3:])])
        assert [item.text for _, item in writer.iter_rows()] == texts
        writer.drop_rows([1, 4])  # one published row, one staged
        assert not writer.contains(text_item("t1").key) and writer.contains(text_item("t2").key)
        moved = BankItem(item_id="renamed", text="t0 renamed", key=text_item("t0").key)
        writer.move_row(0, moved)
        writer.publish()
        with pytest.raises(IndexError):
            writer.drop_rows([3])  # 3 rows now
        writer.move_row(1, BankItem(item_id="x", text="x", key=text_item("t0").key))
        with pytest.raises(BankError, match="its content differs"):
            writer.publish()
    with load_bank(tmp_path / "b", verify="now") as bank:
        assert [item.text for item in bank.items()] == ["t0 renamed", "t2", "t3"]
        np.testing.assert_array_equal(
            bank.vectors("fake:a"), model.embed("text", ["t0", "t2", "t3"])
        )
        assert bank.index("fake:a").ntotal == 3
    with pytest.raises(UsageError, match="no files to prune"):
        index_items(tmp_path / "b", [model], [], IndexOptions(prune=True))
