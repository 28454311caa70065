"""What a new user meets in the first hour with `ucl query`, `ucl index` and `ucl eval`.

Which bank a command uses without --bank (and saying so), `--candidates A B C`, per-model
weights flags, unreadable queries in a batch, input checks before any model loads, and the
help pages. Through the real CLI with the planted backend (tests/planted_backend.py: concept j
is e_j in every modality, so the right answers are known).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
import time
from pathlib import Path

import planted_backend as planted
import pytest
from PIL import Image
from typer.testing import CliRunner

from ucl_cli.cli import app
from ucl_cli.commands import _shared as shared_commands

IMAGE_TEXT, TEXT_AUDIO = "planted:image-text", "planted:text-audio"
MODELS = ["--image-text-model", IMAGE_TEXT, "--text-audio-model", TEXT_AUDIO]
BANK_TEXTS = [f"concept {j}" for j in range(planted.CONCEPTS)] + ["a distractor"]
BUILTIN_TEXTS = 1_054


def index(runner, tmp_path: Path, *args: str, texts: list[str] = BANK_TEXTS):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(texts) + "\n")
    result = runner.invoke(app, ["index", str(corpus), *MODELS, "--device", "cpu", *args])
    assert result.exit_code == 0, result.output
    return result


def query(runner, *args, stdin=None, env=None):
    return runner.invoke(app, ["query", "--device", "cpu", *map(str, args)], input=stdin, env=env)


def jsonl(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def names(hits: list[dict], field: str) -> list[str]:
    return [Path(hit[field]).name for hit in hits]


def bank_lines(result) -> list[str]:
    """The stderr lines that say which bank was used."""
    return [
        line
        for line in result.stderr.splitlines()
        if line.startswith(("ucl: bank ", "ucl: built-in AudioSet bank"))
    ]


# --- 1. the corpus you index is the bank you query -------------------------------------------


def test_the_bank_ucl_index_writes_by_default_is_the_one_query_reads(
    plugin, runner, media_dir, tmp_path, ucl_home
):
    indexed = index(runner, tmp_path)  # no --bank
    assert "bank default: added 7 items" in indexed.stderr
    assert (ucl_home / "banks" / "default" / "manifest.json").is_file()
    result = query(
        runner, media_dir / "images" / "concept2.png", "--candidates", media_dir / "audio"
    )
    assert result.exit_code == 0, result.output
    hits = jsonl(result)
    assert {hit["bank"] for hit in hits} == {"default"}
    assert names(hits, "candidate")[0] == "concept2.wav"
    assert bank_lines(result) == [
        "ucl: bank default (7 texts; the bank `ucl index` writes by default)"
    ]


def test_without_a_default_bank_the_builtin_one_is_used_and_the_line_says_why(
    plugin, runner, media_dir
):
    result = query(
        runner, media_dir / "images" / "concept2.png", "--candidates", media_dir / "audio", *MODELS
    )
    assert result.exit_code == 0, result.output
    assert {hit["bank"][: len("audioset-")] for hit in jsonl(result)} == {"audioset-"}
    assert bank_lines(result) == [
        f"ucl: built-in AudioSet bank ({BUILTIN_TEXTS:,} texts; no bank named default yet; "
        "index a corpus with `ucl index corpus.txt`)"
    ]


def test_ucl_bank_is_the_bank_index_writes_and_query_reads_and_bank_beats_it(
    plugin, runner, media_dir, tmp_path, ucl_home, monkeypatch
):
    monkeypatch.setenv("UCL_BANK", "captions")
    index(runner, tmp_path)
    assert (ucl_home / "banks" / "captions" / "manifest.json").is_file()
    assert not (ucl_home / "banks" / "default").exists()
    args = [media_dir / "images" / "concept1.png", "--candidates", media_dir / "audio"]
    from_variable = query(runner, *args)
    assert from_variable.exit_code == 0, from_variable.output
    assert {hit["bank"] for hit in jsonl(from_variable)} == {"captions"}
    assert bank_lines(from_variable) == ["ucl: bank captions (7 texts; from UCL_BANK)"]
    index(runner, tmp_path, "--bank", "small", texts=BANK_TEXTS[:3])
    from_flag = query(runner, *args, "--bank", "small")
    assert from_flag.exit_code == 0, from_flag.output
    assert {hit["bank"] for hit in jsonl(from_flag)} == {"small"}
    assert bank_lines(from_flag) == ["ucl: bank small (3 texts; --bank)"]


def test_ucl_bank_naming_no_bank_is_an_error_naming_the_variable(
    plugin, runner, media_dir, monkeypatch
):
    monkeypatch.setenv("UCL_BANK", "nowhere")
    result = query(
        runner, media_dir / "images" / "concept1.png", "--candidates", media_dir / "audio"
    )
    assert result.exit_code == 1
    assert "UCL_BANK" in result.stderr and "ucl index --bank nowhere" in result.stderr
    assert result.stdout == ""


def test_bank_builtin_reaches_the_builtin_bank_past_a_default_one(
    plugin, runner, media_dir, tmp_path
):
    index(runner, tmp_path)
    result = query(
        runner,
        media_dir / "images" / "concept1.png",
        "--candidates",
        media_dir / "audio",
        "--bank",
        "builtin",
        *MODELS,
    )
    assert result.exit_code == 0, result.output
    assert jsonl(result)[0]["bank"].startswith("audioset-")
    assert bank_lines(result) == [
        f"ucl: built-in AudioSet bank ({BUILTIN_TEXTS:,} texts; --bank builtin)"
    ]
    corpus = tmp_path / "more.txt"
    corpus.write_text("concept 1\n")
    refused = runner.invoke(app, ["index", str(corpus), "--bank", "builtin", *MODELS])
    assert refused.exit_code == 2
    assert "builtin" in refused.stderr and "another name" in refused.stderr


def test_the_rule_lives_in_one_function(tmp_path, ucl_home, monkeypatch):
    from ucl_cli.bank.catalog import choose_bank

    monkeypatch.delenv("UCL_BANK", raising=False)
    builtin = choose_bank(None)
    assert builtin.path is None and builtin.reason == "no default bank"
    assert choose_bank(None, writing=True).path == ucl_home / "banks" / "default"
    (ucl_home / "banks" / "default").mkdir(parents=True)
    (ucl_home / "banks" / "default" / "manifest.json").write_text("{}")
    assert choose_bank(None).path == ucl_home / "banks" / "default"
    (ucl_home / "banks" / "mine").mkdir()
    (ucl_home / "banks" / "mine" / "manifest.json").write_text("{}")
    monkeypatch.setenv("UCL_BANK", "mine")
    assert choose_bank(None).path == ucl_home / "banks" / "mine"
    assert choose_bank(None).reason == "UCL_BANK"
    assert choose_bank(None, writing=True).path == ucl_home / "banks" / "mine"
    assert choose_bank("default").path == ucl_home / "banks" / "default"
    assert choose_bank("builtin").path is None


def write_pairs(folder: Path, media_dir: Path) -> Path:
    manifest = folder / "pairs.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "image", "audio", "caption"])
        for j in range(planted.CONCEPTS):
            image, audio = media_dir / "images" / f"concept{j}.png", media_dir / "audio"
            writer.writerow([f"c{j}", image, audio / f"concept{j}.wav", f"a recording {j}"])
    return manifest


def test_eval_without_bank_uses_the_default_bank_and_says_so(plugin, runner, media_dir, tmp_path):
    index(runner, tmp_path)
    out = tmp_path / "eval.json"
    result = runner.invoke(
        app,
        ["eval", str(write_pairs(tmp_path, media_dir)), "--trials", "3", "--candidates", "3",
         "-m", "lse", "--device", "cpu", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert json.loads(out.read_text())["bank"]["name"] == "default"
    assert bank_lines(result) == [
        "ucl: bank default (7 texts; the bank `ucl index` writes by default)"
    ]


# --- 2. extra --candidates paths never become queries ----------------------------------------


@pytest.fixture
def bank(plugin, runner, tmp_path) -> str:
    index(runner, tmp_path, "--bank", "planted")
    return "planted"


def test_candidates_takes_every_path_that_follows_and_runs_no_other_query(bank, runner, media_dir):
    audio = media_dir / "audio"
    result = query(
        runner,
        media_dir / "images" / "concept3.png",
        "--candidates",
        audio / "concept2.wav",
        audio / "concept3.wav",
        "--bank",
        bank,
        "--top",
        "0",
    )
    assert result.exit_code == 0, result.output
    hits = jsonl(result)
    assert names(hits, "query") == ["concept3.png", "concept3.png"]
    assert names(hits, "candidate") == ["concept3.wav", "concept2.wav"]
    assert {hit["query_modality"] for hit in hits} == {"image"}
    assert "ranked 2 candidates for 1 query" in result.stderr


def test_a_query_after_the_candidates_is_a_usage_error_saying_where_queries_go(
    bank, runner, media_dir, monkeypatch
):
    loaded = []
    monkeypatch.setattr(shared_commands, "load_encoder", lambda *a, **k: loaded.append(a))
    audio = media_dir / "audio"
    result = query(
        runner,
        "--candidates",
        audio / "concept2.wav",
        audio / "concept3.wav",
        media_dir / "images" / "concept3.png",
        "--bank",
        bank,
    )
    assert result.exit_code == 2
    assert "put the queries first" in result.stderr and "`--`" in result.stderr
    assert result.stdout == "" and loaded == []


def test_double_dash_ends_the_candidates_and_the_flag_still_repeats(bank, runner, media_dir):
    audio, image = media_dir / "audio", media_dir / "images" / "concept4.png"
    two = [audio / "concept4.wav", audio / "concept5.wav"]
    forms = [
        ["--candidates", *two, "--", image],
        [image, "-c", two[0], "-c", two[1]],
        [image, f"--candidates={two[0]}", two[1]],
        [image, "--candidates", two[0], "--candidates", two[1], "--top", "0"],
    ]
    for form in forms:
        result = query(runner, "--bank", bank, *form)  # options before `--`
        assert result.exit_code == 0, (form, result.output)
        hits = jsonl(result)
        assert names(hits, "query") == ["concept4.png"] * 2, form
        assert names(hits, "candidate") == ["concept4.wav", "concept5.wav"], form


# --- 4. per-model weights flags --------------------------------------------------------------


def sha256(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_weights_flags_load_each_model_from_the_given_file(
    plugin, runner, media_dir, tmp_path, ucl_home
):
    first, second, other = (tmp_path / name for name in ("it.bin", "ta.bin", "other.bin"))
    for path in (first, second, other):
        path.write_bytes(path.name.encode() * 8)
    weights = ["--image-text-weights", str(first), "--text-audio-weights", str(second)]
    index(runner, tmp_path, "--bank", "weighed", *weights)
    manifest = json.loads((ucl_home / "banks" / "weighed" / "manifest.json").read_text())
    assert [model["weights"] for model in manifest["models"]] == [sha256(first), sha256(second)]
    args = [media_dir / "images" / "concept1.png", "--candidates", media_dir / "audio"]
    same = query(runner, *args, "--bank", "weighed", *weights)
    assert same.exit_code == 0, same.output
    assert names(jsonl(same), "candidate")[0] == "concept1.wav"
    swapped = query(runner, *args, "--bank", "weighed", "--text-audio-weights", other)
    assert swapped.exit_code == 1
    assert TEXT_AUDIO in swapped.stderr and "other weights" in swapped.stderr
    evaluated = runner.invoke(
        app,
        ["eval", str(write_pairs(tmp_path, media_dir)), "--bank", "weighed", "--trials", "2",
         "--candidates", "3", "--methods", "lse", "--device", "cpu", *weights],
    )  # fmt: skip
    assert evaluated.exit_code == 0, evaluated.output


def test_every_recommended_weights_flag_exists():
    from ucl_cli.encoders.hub import MissingModelFileError
    from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO, get_spec

    for key, flag in ((DEFAULT_IMAGE_TEXT, "--image-text-weights"), (DEFAULT_TEXT_AUDIO,
                      "--text-audio-weights")):  # fmt: skip
        spec = get_spec(key)
        message = str(
            MissingModelFileError(key, [spec.weights], Path("/cache"), weights=spec.weights)
        )
        assert f"`{flag} PATH`" in message, message
    helps = {
        command: CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).stdout
        for command in ("index", "query", "eval")
    }
    source = Path(__file__).parents[1] / "ucl_cli"
    recommended = set()
    for path in source.rglob("*.py"):
        recommended |= set(re.findall(r"--[a-z][a-z-]*weights\b", path.read_text()))
    assert "--weights" not in recommended
    assert {"--image-text-weights", "--text-audio-weights"} <= recommended
    for flag in recommended - {"--allow-other-weights"}:
        for command, text in helps.items():
            assert flag in text, (flag, command)


# --- 5. one bad query does not sink a batch --------------------------------------------------


def truncated_png(path: Path) -> Path:
    """A PNG whose header is fine but whose pixels are cut off: it fails only when decoded."""
    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buffer, "PNG")
    path.write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return path


def test_unreadable_queries_are_skipped_the_rest_ranked_and_the_exit_status_is_1(
    bank, runner, media_dir, tmp_path
):
    notes = tmp_path / "notes.jpg"
    notes.write_text("hello, this is not an image")
    missing = tmp_path / "missing.png"
    cut = truncated_png(tmp_path / "cut.png")
    images = media_dir / "images"
    result = query(
        runner,
        images / "concept1.png",
        notes,
        missing,
        cut,
        images / "concept3.png",
        "--candidates",
        media_dir / "audio",
        "--bank",
        bank,
        "--top",
        "1",
    )
    assert result.exit_code == 1, result.output
    hits = jsonl(result)
    assert [(Path(h["query"]).name, Path(h["candidate"]).name) for h in hits] == [
        ("concept1.png", "concept1.wav"),
        ("concept3.png", "concept3.wav"),
    ]
    skipped = [line for line in result.stderr.splitlines() if "skipping query" in line]
    assert len(skipped) == 3
    for path in (notes, missing, cut):
        assert sum(str(path) in line for line in skipped) == 1, path
    assert "3 queries could not be read" in result.stderr


def test_a_missing_path_on_stdin_is_skipped_like_any_bad_query(bank, runner, media_dir, tmp_path):
    stdin = f"{media_dir / 'images' / 'concept2.png'}\n{tmp_path / 'gone.png'}\n"
    result = query(
        runner, "-", "--candidates", media_dir / "audio", "--bank", bank, "--top", "1",
        "--format", "paths", stdin=stdin,
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stdout.splitlines() == [str(media_dir / "audio" / "concept2.wav")]
    assert f"skipping query {tmp_path / 'gone.png'}: file not found" in result.stderr


def test_strict_stops_at_the_first_bad_query(bank, runner, media_dir, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("hello, this is not an image")
    result = query(
        runner, media_dir / "images" / "concept1.png", notes, tmp_path / "missing.png",
        "--candidates", media_dir / "audio", "--bank", bank, "--strict",
    )  # fmt: skip
    assert result.exit_code == 1
    assert result.stdout == ""
    assert str(notes) in result.stderr and "missing.png" not in result.stderr


# --- 6. input files are checked before models load -------------------------------------------


@pytest.fixture
def slow_loader(monkeypatch) -> list:
    """A model loader that takes 5 s and records each call."""
    calls = []

    def load(key, **kwargs):
        calls.append(key)
        time.sleep(5)
        raise AssertionError("a model was loaded")

    monkeypatch.setattr(shared_commands, "load_encoder", load)
    return calls


def test_a_missing_query_fails_in_under_a_second_without_loading_a_model(
    slow_loader, runner, media_dir, tmp_path
):
    for bad, code, reason in [
        (tmp_path / "nope.jpg", 1, "file not found"),
        (tmp_path / "notes.jpg", 1, "not an image"),
    ]:
        if bad.name == "notes.jpg":
            bad.write_text("hello")
        started = time.perf_counter()
        result = query(runner, bad, "--candidates", media_dir / "audio")
        elapsed = time.perf_counter() - started
        assert result.exit_code == code, result.output
        assert f"{bad}: {reason}" in result.stderr
        assert elapsed < 1.0, elapsed
    assert slow_loader == []


def test_the_cheap_usage_checks_know_every_method_and_format():
    from ucl_cli.bridge import METHODS
    from ucl_cli.commands import query as query_command
    from ucl_cli.output import FORMATS

    assert query_command.METHOD_NAMES == METHODS
    assert query_command.FORMAT_NAMES == FORMATS


def test_missing_candidates_fail_before_any_model_loads(slow_loader, runner, media_dir, tmp_path):
    started = time.perf_counter()
    result = query(runner, media_dir / "images" / "concept1.png", "--candidates", tmp_path / "nope")
    assert time.perf_counter() - started < 1.0
    assert result.exit_code == 2
    assert f"{tmp_path / 'nope'}: file not found" in result.stderr
    assert slow_loader == []


# --- 11. small things ------------------------------------------------------------------------


def test_the_summary_counts_in_the_singular_and_the_plural(bank, runner, media_dir):
    images, audio = media_dir / "images", media_dir / "audio"
    first = query(runner, images / "concept1.png", "-c", audio / "concept1.wav", "--bank", bank)
    assert first.exit_code == 0, first.output
    assert "ranked 1 candidate for 1 query with lse over bank planted (7 texts)" in first.stderr
    assert "embedded 2 files, 0 from the cache" in first.stderr
    second = query(runner, images / "concept2.png", "-c", audio / "concept1.wav", "--bank", bank)
    assert "embedded 1 file, 1 from the cache" in second.stderr
    assert "candidates" not in second.stderr.replace("--candidates", "")


def test_dash_m_means_the_scoring_method_wherever_it_exists(bank, runner, media_dir, tmp_path):
    result = query(
        runner, media_dir / "images" / "concept1.png", "--candidates", media_dir / "audio",
        "--bank", bank, "-m", "caption", "--top", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert jsonl(result)[0]["method"] == "caption"
    corpus = tmp_path / "c.txt"
    corpus.write_text("concept 1\n")
    refused = runner.invoke(app, ["index", str(corpus), "-m", "text", *MODELS])
    assert refused.exit_code == 2 and "-m" in refused.stderr
    helps = {
        command: CliRunner().invoke(app, [command, "--help"], env={"COLUMNS": "200"}).stdout
        for command in ("index", "query", "eval")
    }
    assert re.search(r"--method\s+-m\b", helps["query"])
    assert re.search(r"--methods\s+-m\b", helps["eval"])
    assert not re.search(r"\s-m\s", helps["index"])


def test_same_modality_candidates_are_ranked_with_a_notice(bank, runner, media_dir):
    result = query(
        runner, media_dir / "images" / "concept2.png", "--candidates", media_dir / "images",
        "--bank", bank, "--top", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    [hit] = jsonl(result)
    assert hit["candidate_modality"] == "image" and Path(hit["candidate"]).name == "concept2.png"
    notices = [line for line in result.stderr.splitlines() if "same modality" in line]
    assert notices == [
        "ucl: the candidates are images, like the query: ranked image to image through the "
        "bank (same modality; give audio candidates for an image query)"
    ]


@pytest.mark.parametrize(
    ("command", "usage"),
    [
        ("query", "ucl query [OPTIONS] QUERY..."),
        ("index", "ucl index [OPTIONS] [SOURCE...]"),
        ("eval", "ucl eval [OPTIONS] MANIFEST"),
    ],
)
def test_help_pages_have_plain_metavars_and_examples(runner, command, usage):
    result = runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    text = result.stdout
    assert usage in text
    for noise in ("<list[str]>", "<bool>", "<str>", "<int", "<path>", "{", "}"):
        assert noise not in text, noise
    examples = text[text.index("Examples") :]
    assert len(re.findall(rf"^\s+ucl {command} ", examples, flags=re.MULTILINE)) >= 2
    assert "UCL_BANK" in text  # the --bank help states the rule
