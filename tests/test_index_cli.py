"""`ucl index` and `ucl banks` through the CLI, with fake encoders behind the loader seam."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from fakes import HashEncoder
from typer.testing import CliRunner

import ucl_cli.commands._shared as shared
from ucl_cli.bank import index_items, load_bank, text_item
from ucl_cli.cli import app
from ucl_cli.config import banks_dir

REPO = Path(__file__).parent.parent
runner = CliRunner()


class InterruptingEncoder(HashEncoder):
    """Presses Ctrl-C during its third batch."""

    def _embed_batch(self, modality, batch):
        if len(self.calls) == 2:
            raise KeyboardInterrupt
        return super()._embed_batch(modality, batch)


@pytest.fixture
def loaded(monkeypatch):
    """Replace the model registry: every key loads a HashEncoder (CLAP-like keys: dim 8)."""
    calls: list[tuple[str, str, HashEncoder]] = []
    kinds = {"fake:interrupt": InterruptingEncoder}

    def load_encoder(key: str, *, device: str) -> HashEncoder:
        encoder = kinds.get(key, HashEncoder)(key=key, dim=8 if "clap" in key else 16)
        calls.append((key, device, encoder))
        return encoder

    monkeypatch.setattr(shared, "load_encoder", load_encoder)
    monkeypatch.setattr(shared, "default_model_keys", lambda: ("fake:clip", "fake:clap"))
    return calls


def ucl(*args: str, stdin: str | None = None):
    return runner.invoke(app, list(args), input=stdin)


def said(result) -> str:
    """stderr with line wrapping undone."""
    return " ".join(result.stderr.split())


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_index_a_text_corpus_into_a_named_bank(tmp_path, loaded):
    corpus = write(tmp_path / "corpus.txt", "a dog barks\n\nrain on a roof\na dog barks\nsirens\n")
    result = ucl("index", str(corpus), "--bank", "captions", "--device", "cpu")
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert said(result).startswith(
        "bank captions: added 3 items, skipped 1 repeated line; 3 items in total ("
    )
    assert [(key, device) for key, device, _ in loaded] == [
        ("fake:clip", "cpu"),
        ("fake:clap", "cpu"),
    ]
    with load_bank(banks_dir() / "captions") as bank:
        assert [item.text for item in bank.items()] == ["a dog barks", "rain on a roof", "sirens"]
        assert bank.manifest.model_keys() == ["fake:clip", "fake:clap"]


def test_appending_reuses_the_banks_models_and_embeds_only_new_lines(tmp_path, loaded):
    corpus = write(tmp_path / "corpus.txt", "one\ntwo\nthree\n")
    bank = tmp_path / "banks" / "mine"
    assert (
        ucl("index", str(corpus), "--bank", str(bank), "--text-audio-model", "x:clap").exit_code
        == 0
    )
    write(corpus, "one\ntwo\nthree\nfour\nfive\n")
    loaded.clear()
    result = ucl("index", str(corpus), "--bank", str(bank))
    assert result.exit_code == 0, result.output
    assert "added 2 items, skipped 3 already in the bank; 5 items in total" in said(result)
    assert [key for key, _, _ in loaded] == ["fake:clip", "x:clap"]  # the bank's, not defaults
    assert [size for _, size in loaded[1][2].calls] == [2]


def test_csv_tsv_and_json_lines_corpora(tmp_path, loaded):
    csv_path = write(tmp_path / "c.csv", 'id,caption\n1,"a, b"\n2,c\n')
    jsonl = write(tmp_path / "c.jsonl", '{"t": "d"}\n{"t": "e"}\n')
    tsv = write(tmp_path / "c.tsv", "text\tx\nf\t1\n")
    assert ucl("index", str(csv_path), "--column", "caption", "-b", "b").exit_code == 0
    assert ucl("index", str(jsonl), "--field", "t", "-b", "b").exit_code == 0
    assert ucl("index", str(tsv), "-b", "b").exit_code == 0
    with load_bank(banks_dir() / "b") as bank:
        assert [item.text for item in bank.items()] == ["a, b", "c", "d", "e", "f"]


def test_standard_input(loaded):
    result = ucl("index", "-", "-b", "piped", stdin="from\nstdin\n")
    assert result.exit_code == 0, result.output
    assert len(load_bank(banks_dir() / "piped")) == 2


def test_bad_lines_are_skipped_and_counted_or_stop_the_run_with_strict(tmp_path, loaded):
    corpus = tmp_path / "mixed.txt"
    corpus.write_bytes(b"fine\nbroken \xfe\nalso fine\n")
    result = ucl("index", str(corpus), "-b", "b")
    assert result.exit_code == 0, result.output
    assert f"skipping {corpus}:2: not valid UTF-8 (byte 0xfe at column 8)" in said(result)
    assert "added 2 items, skipped 1 unreadable line; 2 items in total" in said(result)
    result = ucl("index", str(corpus), "-b", "strict", "--strict")
    assert result.exit_code == 1
    assert said(result) == (
        f"ucl: error: {corpus}: line 2: not valid UTF-8 (byte 0xfe at column 8)"
    )
    assert not (banks_dir() / "strict" / "manifest.json").exists()


@pytest.mark.parametrize(
    ("content", "args", "code", "message"),
    [
        ("", [], 1, "{path}: holds no text: it is empty or every line is blank"),
        ("id,caption\n1,a\n", ["--column", "text"], 2, "no column 'text'"),
        ('{"caption": "a"}\n', ["--field", "text", "--format", "jsonl"], 2, "no field 'text'"),
        ("a\n", ["--faiss-index", "Nope"], 2, "FAISS cannot build index 'Nope'"),
        ("a\n", ["--bank", "bad name"], 2, "bank name 'bad name' may hold only"),
    ],
)
def test_input_errors_exit_with_one_line(tmp_path, loaded, content, args, code, message):
    path = write(tmp_path / ("corpus.csv" if "--column" in args else "corpus.txt"), content)
    result = ucl("index", str(path), *args)
    assert result.exit_code == code, result.output
    assert said(result).startswith("ucl: error: ")
    assert message.format(path=path) in said(result)
    assert result.stdout == ""


def test_a_missing_corpus_fails_before_any_model_loads(tmp_path, loaded):
    result = ucl("index", str(tmp_path / "absent.txt"))
    assert result.exit_code == 1
    assert said(result) == f"ucl: error: {tmp_path / 'absent.txt'}: no such file"
    assert loaded == []
    result = ucl("index", str(tmp_path))
    assert result.exit_code == 2 and "is a folder" in said(result)


def test_other_models_than_the_banks_are_refused_naming_both(tmp_path, loaded):
    corpus = write(tmp_path / "corpus.txt", "one\n")
    assert ucl("index", str(corpus), "-b", "b").exit_code == 0
    result = ucl("index", str(corpus), "-b", "b", "--image-text-model", "fake:other")
    assert result.exit_code == 1
    assert said(result) == (
        f"ucl: error: bank {banks_dir() / 'b'} was built with fake:clip (dim 16) and fake:clap "
        "(dim 8); this run uses fake:other (dim 16) and fake:clap (dim 8)"
    )


def test_ctrl_c_keeps_finished_batches_and_the_rerun_completes(tmp_path, loaded, monkeypatch):
    corpus = write(tmp_path / "corpus.txt", "".join(f"line {i}\n" for i in range(50)))
    args = ["index", str(corpus), "-b", "b", "--batch-size", "10"]
    result = ucl(*args, "--image-text-model", "fake:interrupt")
    assert result.exit_code == 130
    assert said(result) == (
        "ucl: bank b keeps the 20 items embedded so far; run the same command again to finish "
        "ucl: interrupted"
    )
    with load_bank(banks_dir() / "b") as bank:
        assert len(bank) == 20
    loaded.clear()
    monkeypatch.setattr(InterruptingEncoder, "_embed_batch", HashEncoder._embed_batch)
    result = ucl(*args)  # the bank's models again: fake:interrupt (now calm) and fake:clap
    assert result.exit_code == 0, result.output
    assert "added 30 items, skipped 20 already in the bank; 50 items in total" in said(result)
    assert [size for _, size in loaded[0][2].calls] == [10, 10, 10]


def test_image_and_audio_banks_hold_files(tmp_path, loaded):
    from PIL import Image

    pictures = tmp_path / "pictures"
    pictures.mkdir()
    for shade in (0, 128, 255):
        Image.new("RGB", (8, 8), (shade, 0, 0)).save(pictures / f"red{shade}.png")
    (pictures / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    result = ucl("index", str(pictures), "--modality", "image", "-b", "pictures")
    assert result.exit_code == 0, result.output
    assert "broken.png" in said(result) and "added 3 items" in said(result)
    with load_bank(banks_dir() / "pictures") as bank:
        assert bank.modality == "image"
        assert sorted(Path(item.text).name for item in bank.items()) == [
            "red0.png",
            "red128.png",
            "red255.png",
        ]

    import soundfile

    sounds = tmp_path / "sounds"
    sounds.mkdir()
    for pitch in (220, 440):
        tone = np.sin(np.arange(1600) * pitch / 16_000 * 2 * np.pi).astype(np.float32)
        soundfile.write(sounds / f"tone{pitch}.wav", tone, 16_000)
    result = ucl("index", str(sounds), "--modality", "audio", "-b", "sounds")
    assert result.exit_code == 0, result.output
    with load_bank(banks_dir() / "sounds") as bank:
        assert len(bank) == 2 and bank.modality == "audio"
    result = ucl("index", str(sounds), "--modality", "text", "-b", "sounds")
    assert result.exit_code == 2 and "is a folder" in said(result)


def test_banks_lists_every_bank_with_models_and_counts(tmp_path, loaded):
    result = ucl("banks")
    assert result.exit_code == 0 and result.stdout == ""
    assert "no banks under" in said(result)
    corpus = write(tmp_path / "corpus.txt", "one\ntwo\n")
    assert ucl("index", str(corpus), "-b", "alpha").exit_code == 0
    assert ucl("index", str(corpus), "-b", "beta", "--faiss-index", "HNSW8").exit_code == 0
    result = ucl("banks", "--verify", "--format", "table")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.stdout.splitlines() if "alpha" in line or "beta" in line]
    assert len(lines) == 2
    assert all("fake:clip (16)" in line and "checksums ok" in line for line in lines)
    assert "Flat" in lines[0] and "HNSW8" in lines[1]


def test_python_dash_m_runs_the_cli_in_a_fresh_process(tmp_path, monkeypatch):
    home = tmp_path / "home"
    env = {**os.environ, "UCL_HOME": str(home), "PYTHONPATH": str(REPO)}
    items = [text_item(text) for text in ("one", "two", "three")]
    monkeypatch.setenv("UCL_HOME", str(home))  # the in-process bank goes to the same place
    index_items(banks_dir() / "fresh", [HashEncoder(key="fake:a", dim=4)], items)
    listed = subprocess.run(
        [sys.executable, "-m", "ucl_cli", "banks", "--format", "table"],
        env={**env, "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if "fresh" in line)
    assert "fake:a (4)" in row and " 3 " in row
    missing = subprocess.run(
        [sys.executable, "-m", "ucl_cli", "index", str(tmp_path / "absent.txt")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert missing.returncode == 1
    assert (
        " ".join(missing.stderr.split()) == f"ucl: error: {tmp_path / 'absent.txt'}: no such file"
    )
    assert json.loads((banks_dir() / "fresh" / "manifest.json").read_text())["count"] == 3


def test_banks_shows_an_interrupted_first_run_and_a_damaged_bank(tmp_path):
    from ucl_cli.bank import ModelRecord
    from ucl_cli.bank.writer import BankWriter, WriterOptions

    model = HashEncoder(key="fake:a", dim=4)
    writer = BankWriter(banks_dir() / "halfway", [ModelRecord.from_encoder(model)], WriterOptions())
    with writer:  # killed before its first publish: rows staged, nothing published
        texts = ["one", "two", "three"]
        writer.add([text_item(t) for t in texts], [model.embed("text", texts)])
    (banks_dir() / "broken").mkdir()
    (banks_dir() / "broken" / "manifest.json").write_text("{")
    result = ucl("banks", "--format", "table")
    assert result.exit_code == 0, result.output
    rows = {line.split()[1]: line for line in result.stdout.splitlines() if "│ " in line[:2]}
    assert "3 rows staged by an interrupted run" in rows["halfway"]
    assert "not valid JSON" in rows["broken"]
