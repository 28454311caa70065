"""What a new user meets in the first hour, outside the query itself: stand-in models that say
so, documentation that ships, pipes that behave like pipes, bank texts cut to the text towers'
context (and marked), help pages with plain metavars and examples, and the small things around
them (the demo's table and stdout, the synth timing, the package metadata).

The stand-ins here are the small random-weight models of scripts/make_test_models.py --small,
loaded through the production code; the pipe tests run `python -m ucl_cli` in real processes.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fakes import HashEncoder
from PIL import Image
from typer.testing import CliRunner

from ucl_cli.bank import index_items, load_bank, text_item
from ucl_cli.bank.items import BankItem
from ucl_cli.cli import app
from ucl_cli.config import banks_dir
from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).parent
WARNING = "random weights: rankings are meaningless"
runner = CliRunner()


def run_script(path: Path, argv: list[str]) -> tuple[int, str, str]:
    """A script's `main(argv)` in this process: (exit status, stdout, stderr)."""
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = module.main(argv)
    return status, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> tuple[Path, str, str]:
    """Small stand-ins of both default models in one HF_HOME, written as the demo writes them."""
    root = tmp_path_factory.mktemp("standins")
    status, out, err = run_script(ROOT / "scripts" / "make_test_models.py", [str(root), "--small"])
    assert status == 0, err
    return root, out, err


@pytest.fixture
def copied_hub(standins, tmp_path, monkeypatch) -> Path:
    """The stand-ins' hub folder copied as a user copies a cache (links followed, nothing else)."""
    copy = tmp_path / "copied_hf_home"
    shutil.copytree(standins[0] / "hub", copy / "hub", symlinks=False)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HOME", str(copy))
    return copy


def warnings_in(text: str) -> list[str]:
    """The stand-in warnings of a stderr (each one line)."""
    return [line for line in text.splitlines() if WARNING in line]


# --- 7. stand-in models say so -----------------------------------------------------------------


def test_make_test_models_keeps_stdout_empty(standins):
    # Failed before: the written files were listed on stdout, in the middle of the demo's output.
    _root, out, err = standins
    assert out == ""
    assert "laion/CLIP-ViT-B-32-laion2B-s34B-b79K/open_clip_model.safetensors" in err
    assert "lukewys/laion_clap/630k-audioset-best.pt" in err
    assert "RANDOM weights" in err


def test_doctor_marks_standins_even_in_a_copied_cache(copied_hub):
    # Failed before: both default models were listed as `ok`, with nothing on stderr.
    result = runner.invoke(app, ["doctor"])
    assert result.exit_code == 0, result.output
    rows = {
        key: next(line for line in result.stdout.splitlines() if f" {key} (default)" in line)
        for key in (DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO)
    }
    assert "stand-in" in rows[DEFAULT_IMAGE_TEXT] and "stand-in" in rows[DEFAULT_TEXT_AUDIO]
    assert "ok" not in rows[DEFAULT_IMAGE_TEXT].split()
    (line,) = warnings_in(result.stderr)
    assert line.startswith("ucl: ")
    assert DEFAULT_IMAGE_TEXT in line and DEFAULT_TEXT_AUDIO in line


def test_models_lists_standins_and_warns_once(copied_hub):
    # Failed before: no `standin` field and no warning.
    result = runner.invoke(app, ["models", "--format", "jsonl"])
    assert result.exit_code == 0, result.output
    rows = {row["key"]: row for row in map(json.loads, result.stdout.splitlines())}
    assert rows[DEFAULT_IMAGE_TEXT]["standin"] is True
    assert rows[DEFAULT_TEXT_AUDIO]["standin"] is True
    assert rows[DEFAULT_IMAGE_TEXT]["state"] == "cached"
    assert not any(
        row["standin"]
        for key, row in rows.items()
        if key not in (DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO)
    )
    assert len(warnings_in(result.stderr)) == 1
    table = runner.invoke(app, ["models", "--format", "table"])
    assert "stand-in" in table.stdout and len(warnings_in(table.stderr)) == 1


def test_load_encoder_flags_standins_and_real_plugins_are_not(copied_hub, plugin):
    # Failed before: encoders had no `standin` attribute.
    from ucl_cli.encoders.registry import load_encoder

    assert load_encoder(DEFAULT_IMAGE_TEXT).standin is True
    assert load_encoder(DEFAULT_TEXT_AUDIO).standin is True
    assert load_encoder("planted:image-text").standin is False


# --- 10. bank texts longer than a text tower's context ----------------------------------------

SHORT = ["a dog barks", "rain on a roof"]
LONG = " ".join(f"word{n} and then" for n in range(60))  # about 240 tokens in either tokenizer


def test_index_cuts_long_texts_to_what_every_tower_embeds_and_says_so(
    copied_hub, tmp_path, monkeypatch
):
    # Failed before: no warning, the whole line stored and shown, no mark of the cut.
    from ucl_cli.encoders.registry import load_encoder

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join([SHORT[0], LONG, SHORT[1], "x " + LONG]) + "\n")
    result = runner.invoke(app, ["index", str(corpus), "--bank", "long", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert len(warnings_in(result.stderr)) == 1  # the stand-ins, said once per command
    said = " ".join(result.stderr.split())
    assert "2 texts longer than a text tower's context (77 tokens) were cut" in said
    assert f"{corpus}:2, {corpus}:4" in said

    towers = [load_encoder(DEFAULT_IMAGE_TEXT), load_encoder(DEFAULT_TEXT_AUDIO)]
    with load_bank(banks_dir() / "long") as bank:
        items = list(bank.items())
    assert [item.truncated for item in items] == [False, True, False, True]
    assert [items[0].text, items[2].text] == SHORT
    for item, full in ((items[1], LONG), (items[3], "x " + LONG)):
        assert full.startswith(item.text + " ")  # whole words, a prefix of the line
        for tower in towers:
            assert tower.text_token_counts([item.text])[0] <= 77
            longer = " ".join(full.split()[: len(item.text.split()) + 1])
            assert max(t.text_token_counts([longer])[0] for t in towers) > 77

    image = tmp_path / "photo.png"
    Image.new("RGB", (32, 32), (120, 30, 200)).save(image)
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    sf.write(sounds / "tone.wav", 0.3 * np.sin(np.arange(24_000) / 7.0), 48_000)
    query = runner.invoke(
        app,
        [
            "query",
            str(image),
            "--candidates",
            str(sounds),
            "--bank",
            "long",
            "--device",
            "cpu",
            "--explain",
            "4",
            "--format",
            "jsonl",
        ],
    )
    assert query.exit_code == 0, query.output
    (hit,) = [json.loads(line) for line in query.stdout.splitlines()]
    by_text = {entry["text"]: entry for entry in hit["bridge"]}
    assert by_text[items[1].text]["truncated"] is True
    assert by_text[items[3].text]["truncated"] is True
    assert "truncated" not in by_text[SHORT[0]]
    table = runner.invoke(
        app,
        [
            "query",
            str(image),
            "--candidates",
            str(sounds),
            "--bank",
            "long",
            "--device",
            "cpu",
            "--explain",
            "4",
            "--format",
            "table",
        ],
        env={"COLUMNS": "300"},
    )
    assert table.stdout.count("… (cut)") == 2


class WordTower(HashEncoder):
    """A text tower whose tokens are words: a context of 7 holds 5 words and 2 special tokens."""

    text_context = 7

    def text_token_counts(self, texts):
        return [len(text.split()) + 2 for text in texts]


def test_context_fit_keeps_whole_words_and_names_lines():
    # Failed before: there was nothing that fitted texts to a context.
    from ucl_cli.bank.corpus import ContextFit

    fit = ContextFit([WordTower(key="fake:w"), HashEncoder(key="fake:h")])
    items = [
        text_item("one two three"),
        text_item("one two three four five six seven eight"),
        text_item("a b c d e f"),
    ]
    items = [
        BankItem(i.item_id, i.text, i.key, origin=f"c.txt:{n}") for n, i in enumerate(items, 1)
    ]
    out = list(fit.apply(items))
    assert [(item.text, item.truncated) for item in out] == [
        ("one two three", False),
        ("one two three four five", True),
        ("a b c d e", True),
    ]
    assert [item.key for item in out] == [item.key for item in items]  # still deduplicated as read
    assert fit.cut == 2 and fit.where == ["c.txt:2", "c.txt:3"]


def test_bank_items_of_older_banks_still_read():
    old = BankItem.from_line(b'{"id": "k", "text": "a dog", "key": "00000000000000aa"}\n')
    assert old == BankItem("k", "a dog", "00000000000000aa") and old.truncated is False
    cut = BankItem("k", "a dog", "00000000000000aa", truncated=True)
    assert json.loads(cut.to_line())["truncated"] is True
    assert "truncated" not in json.loads(old.to_line())
    assert BankItem.from_line(cut.to_line()).truncated is True


# --- 9. pipes behave like pipes ----------------------------------------------------------------


def small_bank(name: str = "fresh") -> None:
    items = [text_item(text) for text in ("one", "two", "three")]
    index_items(banks_dir() / name, [HashEncoder(key="fake:a", dim=4)], items)


def test_banks_defaults_to_json_lines_in_a_pipe():
    # Failed before: a box table went into the pipe, and --format did not exist.
    small_bank()
    result = runner.invoke(app, ["banks"])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["name"] == "fresh" and record["items"] == 3 and record["modality"] == "text"
    assert record["models"] == [{"key": "fake:a", "dim": 4}]
    assert record["index"] == "Flat" and record["size_bytes"] > 0
    assert record["path"] == str(banks_dir() / "fresh")
    verified = runner.invoke(app, ["banks", "--verify"])
    assert json.loads(verified.stdout)["verified"] == "checksums ok"
    table = runner.invoke(app, ["banks", "--format", "table"])
    assert "┃ name" in table.stdout and "fake:a (4)" in table.stdout
    assert runner.invoke(app, ["banks", "--format", "xml"]).exit_code == 2


def test_cache_info_defaults_to_json_lines_in_a_pipe(tmp_path):
    # Failed before: a box table went into the pipe, and --format did not exist.
    from ucl_cli.cache import EmbeddingCache, embed_files

    photos = []
    for n in range(3):
        photos.append(tmp_path / f"p{n}.png")
        Image.new("RGB", (8, 8), (n * 40, 0, 0)).save(photos[-1])
    with EmbeddingCache() as store:
        embed_files(HashEncoder(key="fake:a"), "image", photos, store)
    result = runner.invoke(app, ["cache", "info"])
    assert result.exit_code == 0, result.output
    (record,) = [json.loads(line) for line in result.stdout.splitlines()]
    assert record["vectors"] == 3 and record["read_only"] is False
    assert record["models"] == [
        {"model": "fake:a", "modality": "image", "dim": 16, "vectors": 3, "bytes": 192}
    ]
    table = runner.invoke(app, ["cache", "info", "--format", "table"])
    assert "3 vectors" in table.stdout and "fake:a" in table.stdout


def ucl_process(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    """`python -m ucl_cli ARGS` whose reader has gone before it writes (stdout closed at once)."""
    process = subprocess.Popen(
        [sys.executable, "-m", "ucl_cli", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    process.stdout.close()  # the reader is gone before the child has even imported anything
    stderr = process.stderr.read().decode()
    return subprocess.CompletedProcess(args, process.wait(timeout=300), "", stderr)


def quiet_end(completed: subprocess.CompletedProcess) -> None:
    assert completed.returncode == 0, completed.stderr
    for noise in ("Traceback", "Broken pipe", "BrokenPipe", "Exception ignored", "error"):
        assert noise not in completed.stderr, completed.stderr


@pytest.fixture
def pipe_env(ucl_home, plugin) -> dict[str, str]:
    path = os.pathsep.join([str(plugin), str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "UCL_HOME": str(ucl_home), "PYTHONPATH": path}


@pytest.mark.parametrize(
    "args",
    [["models", "--format", "jsonl"], ["models", "--format", "table"], ["banks"]],
    ids=["echo", "rich", "banks"],
)
def test_a_closed_stdout_is_a_normal_end(args, pipe_env):
    # Failed before: exit status 1 (click's EPIPE handler, Rich's on_broken_pipe).
    small_bank()
    quiet_end(ucl_process(args, pipe_env))


def planted_query(tmp_path) -> list[str]:
    """A `ucl query` over the planted test models, with 40 candidates (40 JSON lines)."""
    from test_query import BANK_TEXTS, IMAGE_TEXT, TEXT_AUDIO, index_planted

    index_planted(runner, tmp_path / "corpus.txt", BANK_TEXTS, "planted")
    (tmp_path / "audio").mkdir()
    for n in range(40):
        samples = np.full(4_000, (n % 6 + 1) / 20, dtype=np.float32)
        sf.write(tmp_path / "audio" / f"clip{n:02}.wav", samples, 16_000, subtype="FLOAT")
    image = tmp_path / "photo.png"
    Image.new("RGB", (16, 16), (20,) * 3).save(image)
    return ["query", str(image), "--candidates", str(tmp_path / "audio"), "--bank", "planted",
            "--image-text-model", IMAGE_TEXT, "--text-audio-model", TEXT_AUDIO, "--top", "0",
            "--device", "cpu"]  # fmt: skip


def test_query_into_head_keeps_pipefail_scripts_going(tmp_path, pipe_env):
    # Failed before: `ucl query ... | head -1` ended the pipeline with status 1 under pipefail.
    args = planted_query(tmp_path)
    shell = (
        "set -o pipefail; "
        f"{sys.executable} -m ucl_cli {' '.join(args)} --format jsonl | head -n 0; "
        'echo "status=$?"'
    )
    completed = subprocess.run(
        ["bash", "-c", shell], capture_output=True, text=True, env=pipe_env, timeout=300
    )
    assert completed.stdout == "status=0\n", completed.stderr
    quiet_end(subprocess.CompletedProcess(args, 0, "", completed.stderr))
    quiet_end(ucl_process([*args, "--format", "table"], pipe_env))


# --- 8. the docs users have are in the project --------------------------------------------------

SHIPPED = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md")),
           *sorted((ROOT / "ucl_cli").rglob("*.py"))]  # fmt: skip


def test_no_shipped_file_cites_files_users_do_not_have():
    # Failed before: 31 citations, in help texts, messages, comments and docs, of a notes file
    # that never shipped.
    cited = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in SHIPPED
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if re.search(r"\b(PAPER|DESIGN|STYLE)\.md\b", line)
    ]
    assert cited == []


def slug(heading: str) -> str:
    """GitHub's anchor of a Markdown heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def test_method_pointers_lead_to_sections_that_exist():
    # Failed before: docs/METHOD.md did not exist.
    method = (ROOT / "docs" / "METHOD.md").read_text(encoding="utf-8")
    anchors = {slug(line.lstrip("#")) for line in method.splitlines() if line.startswith("#")}
    files = [*SHIPPED, *sorted((ROOT / "tests").glob("*.py")), *sorted(ROOT.glob("*.md"))]
    pointers = {
        (path.name, anchor)
        for path in files
        for anchor in re.findall(r"METHOD\.md#([\w\-]+)", path.read_text(encoding="utf-8"))
    }
    assert len(pointers) >= 10
    assert sorted(p for p in pointers if p[1] not in anchors) == []
    assert "Che & Eysenbach" in method and "ICLR 2025" in method


# --- 11. small things --------------------------------------------------------------------------


def test_result_table_breaks_long_paths_only_between_folders(monkeypatch):
    # Failed before: `tone_440.w` / `av`, a file name cut mid-word.
    from ucl_cli.bridge.pipeline import BridgeWeight, Hit, QueryResult
    from ucl_cli.modality import Modality
    from ucl_cli.output import write_results

    monkeypatch.setenv("COLUMNS", "100")
    candidate = Path(
        "/tmp/ucl_r_demo_media/some/deeper/folders/audio/tone_440_with_a_long_name.wav"
    )
    bridge = (BridgeWeight(3, "Paper is crumpled and torn", 0.57),)
    hits = [Hit(1, candidate, -0.061, bridge=bridge, effective_sample_size=2.9)]
    result = QueryResult(Path("astronaut.png"), Modality.IMAGE, Modality.AUDIO, "lse", "c", hits)
    stream = io.StringIO()
    write_results([result], "table", stream)
    cells = [line.split("│")[2].strip() for line in stream.getvalue().splitlines()
             if line.startswith("│")]  # fmt: skip
    assert "".join(cells) == str(candidate)
    assert all(cell.endswith("/") or cell == cells[-1] for cell in cells if cell)
    assert cells[-1].endswith("tone_440_with_a_long_name.wav")


def quick_seconds(text: str) -> list[int]:
    return [int(s) for s in re.findall(r"quick[^.]*?about (\d+) s", " ".join(text.split()))]


def test_readme_and_synth_help_give_the_same_quick_preset_time():
    # Failed before: "about 30 s" in the README, "a minute or so" in `ucl synth --help`.
    readme = quick_seconds((ROOT / "README.md").read_text(encoding="utf-8"))
    shown = runner.invoke(app, ["synth", "--help"], env={"COLUMNS": "200"}).stdout
    assert readme and readme == quick_seconds(shown)[:1]


def test_project_license_is_an_spdx_string_setuptools_accepts_quietly():
    # Failed before: `license = { text = "MIT" }`, a deprecation warning on every install.
    from setuptools.config.pyprojecttoml import apply_configuration
    from setuptools.dist import Distribution

    tomllib = pytest.importorskip("tomllib")
    with open(ROOT / "pyproject.toml", "rb") as handle:
        project = tomllib.load(handle)
    assert project["project"]["license"] == "MIT"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        apply_configuration(Distribution(), ROOT / "pyproject.toml")


@pytest.mark.parametrize(
    "command",
    [
        ["banks"],
        ["cache"],
        ["cache", "info"],
        ["cache", "clear"],
        ["models"],
        ["models", "fetch"],
        ["doctor"],
        ["synth"],
    ],
    ids=" ".join,
)
def test_help_pages_have_plain_metavars_and_examples(command):
    # Failed before: `<bool>`, `<list[str]>`, `<str>` and no examples.
    shown = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "120"})
    assert shown.exit_code == 0, shown.output
    for noise in ("<bool>", "<list[str]>", "<str>", "<int", "<file>", "<float>"):
        assert noise not in shown.stdout, noise
    (usage,) = [line for line in shown.stdout.splitlines() if "Usage:" in line]
    assert "{" not in usage
    assert "Examples" in shown.stdout
    examples = shown.stdout.split("Examples", 1)[1]
    assert len(re.findall(r"^\s*(?:[A-Z_]+=\S+ )*ucl ", examples, flags=re.MULTILINE)) >= 2
