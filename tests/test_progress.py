"""Progress of long steps (index, the first built-in bank, eval, synth) and what `ucl index` says
when it is done, through the CLI.

A pipe gets plain lines ("ucl: embedding 40/100 texts (40%), 18 s left"); a terminal gets a bar.
The progress clock is replaced by one that moves a few seconds per reading, so the lines are
exact. A step prints nothing in its first 10 s.
"""

from __future__ import annotations

import itertools
import re
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from fakes import HashEncoder
from typer.testing import CliRunner

import ucl_cli.commands._shared as shared
from ucl_cli.bank import load_bank
from ucl_cli.cli import app
from ucl_cli.config import banks_dir

runner = CliRunner()
IMAGE_TEXT, TEXT_AUDIO = "planted:image-text", "planted:text-audio"
PLANTED = ["--image-text-model", IMAGE_TEXT, "--text-audio-model", TEXT_AUDIO]


@pytest.fixture
def loaded(monkeypatch):
    """Every model key loads a HashEncoder (no weights)."""
    monkeypatch.setattr(
        shared, "load_encoder", lambda key, *, device, **_: HashEncoder(key=key, dim=8)
    )
    monkeypatch.setattr(shared, "default_model_keys", lambda: ("fake:clip", "fake:clap"))


@pytest.fixture
def clock(monkeypatch):
    """Set the progress view's clock: 0 s, step, 2 step, ... one step per reading."""
    from ucl_cli.commands._progress import ProgressView

    def use(step: float) -> None:
        ticks = itertools.count(0.0, step)
        monkeypatch.setattr(ProgressView, "clock", staticmethod(lambda: next(ticks)))

    return use


def ucl(*args: str):
    return runner.invoke(app, list(args))


def said(result) -> str:
    """stderr with line wrapping undone."""
    return " ".join(result.stderr.split())


def lines(result, prefix: str = "ucl: ") -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith(prefix)]


def corpus(tmp_path: Path, texts: list[str], name: str = "corpus.txt") -> str:
    path = tmp_path / name
    path.write_text("".join(f"{text}\n" for text in texts), encoding="utf-8")
    return str(path)


# --- progress in a pipe and on a terminal ----------------------------------------------------


def test_index_in_a_pipe_prints_a_plain_line_per_tenth_with_the_time_left(tmp_path, loaded, clock):
    clock(3.0)  # a batch of 10 texts takes 3 s
    texts = [f"line {i}" for i in range(100)]
    result = ucl("index", corpus(tmp_path, texts), "-b", "b", "--batch-size", "10")
    assert result.exit_code == 0, result.output
    assert lines(result, "ucl: embedding") == [  # nothing in the first 10 s
        "ucl: embedding 40/100 texts (40%), 18 s left",
        "ucl: embedding 50/100 texts (50%), 15 s left",
        "ucl: embedding 60/100 texts (60%), 12 s left",
        "ucl: embedding 70/100 texts (70%), 9 s left",
        "ucl: embedding 80/100 texts (80%), 6 s left",
        "ucl: embedding 90/100 texts (90%), 3 s left",
        "ucl: embedding 100/100 texts (100%)",
    ]
    assert "\x1b[" not in result.stderr  # no control codes in a pipe


def test_plain_lines_come_every_ten_seconds_when_a_tenth_takes_long(tmp_path, loaded, clock):
    clock(4.0)  # 4 s per batch of 1 of 100 texts: a tenth is 40 s
    texts = [f"line {i}" for i in range(100)]
    result = ucl("index", corpus(tmp_path, texts), "-b", "b", "--batch-size", "1")
    assert result.exit_code == 0, result.output
    shown = lines(result, "ucl: embedding")
    assert shown[:3] == [
        "ucl: embedding 3/100 texts (3%), 6 min 28 s left",
        "ucl: embedding 6/100 texts (6%), 6 min 16 s left",
        "ucl: embedding 9/100 texts (9%), 6 min 4 s left",
    ]
    done = [int(line.split()[2].split("/")[0]) for line in shown]
    # every 12 s (three batches), and at each tenth: 3, 6, 9, 10, 13, ... 99, 100
    assert done == [tenth + step for tenth in range(0, 100, 10) for step in (3, 6, 9, 10)]


def test_index_on_a_terminal_draws_a_bar_with_counts(tmp_path, loaded, monkeypatch):
    monkeypatch.setenv("TTY_COMPATIBLE", "1")  # what Rich takes for a terminal
    texts = [f"line {i}" for i in range(30)]
    result = ucl("index", corpus(tmp_path, texts), "-b", "b", "--batch-size", "10")
    assert result.exit_code == 0, result.output
    assert re.search(r"embedding \x1b\[\d+m━+.* \d+/30 texts ", result.stderr)  # a bar, counted
    assert "saving 30 rows" in result.stderr
    assert not lines(result, "ucl: embedding")
    assert "bank b: added 30 items; 30 items in total" in said(result)


def test_the_first_builtin_bank_says_what_it_builds_and_shows_progress_once(
    plugin, tmp_path, clock
):
    clock(3.0)  # a batch of 64 texts takes 3 s
    from PIL import Image

    image = tmp_path / "grey.png"
    Image.new("RGB", (8, 8), (20, 20, 20)).save(image)
    sounds = tmp_path / "sounds"
    sounds.mkdir()
    import soundfile as sf

    sf.write(sounds / "a.wav", np.full(4000, 0.15, dtype=np.float32), 16_000, subtype="FLOAT")
    args = ["query", str(image), "--candidates", str(sounds), "--device", "cpu", *PLANTED]
    first = ucl(*args)
    assert first.exit_code == 0, first.output
    (bank,) = [path for path in banks_dir().iterdir() if path.name.startswith("audioset-")]
    assert (
        f"ucl: building the built-in AudioSet bank for {IMAGE_TEXT} and {TEXT_AUDIO} (1,054 "
        f"texts, once; cached in {bank})" in said(first)
    )
    progress = lines(first, "ucl: embedding")
    assert progress[0] == "ucl: embedding 256/1,054 texts (24%), 37 s left"  # from 10 s on
    assert progress[-1] == "ucl: embedding 1,054/1,054 texts (100%)"
    done = [int(line.split()[2].split("/")[0].replace(",", "")) for line in progress]
    assert done == [64 * k for k in (4, 5, 7, 9, 10, 12, 14, 15)] + [1054]  # at each tenth
    second = ucl(*args)
    assert second.exit_code == 0, second.output
    assert "building" not in said(second) and not lines(second, "ucl: embedding")
    assert first.stdout == second.stdout


def test_eval_in_a_pipe_prints_each_stage(plugin, tmp_path, clock):
    clock(11.0)  # every step takes 11 s
    from test_eval import concept_manifest

    texts = [f"concept {j}" for j in range(6)]
    assert ucl("index", corpus(tmp_path, texts), "--bank", "planted", *PLANTED).exit_code == 0
    manifest = concept_manifest(tmp_path / "data", range(6))
    result = ucl(
        "eval", str(manifest), "--bank", "planted", "--trials", "3", "--candidates", "6",
        "--methods", "lse", "--device", "cpu",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert lines(result, "ucl: embedding") == [
        f"ucl: embedding 6 image files with {IMAGE_TEXT} 6/6 (100%)",
        f"ucl: embedding 6 audio files with {TEXT_AUDIO} 6/6 (100%)",
    ]
    assert "ucl: scoring 3 trials of 6 candidates 1/1 (100%)" in lines(result)


def test_synth_in_a_pipe_prints_progress_and_each_finished_task(monkeypatch, clock):
    from ucl_cli.experiments import runner as synth_runner

    clock(3.0)  # an epoch takes 3 s

    def run_synthetic(options, *, on_progress, **_):
        for epoch in range(1, 5):
            on_progress(synth_runner.Progress(epoch, 10, f"seed 0 cosine: epoch {epoch}/8"))
        on_progress(synth_runner.Progress(5, 10, "seed 0 cosine: done"))
        raise KeyboardInterrupt  # the tables need real results; the progress is what is tested

    monkeypatch.setattr(synth_runner, "run_synthetic", run_synthetic)
    result = ucl("synth", "--seeds", "0")
    assert result.exit_code == 130
    assert lines(result) == [
        "ucl: seed 0 cosine: epoch 4/8 (40%), 18 s left",  # from 10 s on
        "ucl: seed 0 cosine: done (50%), 15 s left",  # a finished task: always a line
        "ucl: interrupted",
    ]


# --- a cheaper first built-in bank: text towers skip the padding -----------------------------

TEXTS = ["Speech", "the sound of Speech", "a dog barks at the mail carrier twice", "", "x " * 90]
TEXTS = TEXTS + [
    f"the sound of {word}" * (1 + i % 3) for i, word in enumerate("abcdefghijklmnopqrst")
]


def test_clip_text_vectors_equal_open_clips_padded_ones_from_short_sequences(clip_encoder):
    seen: list[int] = []
    hook = clip_encoder.model.transformer.register_forward_hook(
        lambda module, args, out: seen.append(args[0].shape[1])
    )
    try:
        ours = clip_encoder.embed("text", TEXTS, batch_size=64)
    finally:
        hook.remove()
    with torch.inference_mode():
        padded = clip_encoder.model.encode_text(clip_encoder.tokenizer(TEXTS))  # 77 tokens each
    theirs = torch.nn.functional.normalize(padded, dim=-1).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert max(seen) == 77 and sorted(seen)[0] <= 12  # only the group with the long text is full


def test_clap_text_vectors_equal_laion_claps_padded_ones_from_short_sequences(clap_encoder):
    seen: list[int] = []
    hook = clap_encoder.model.text_branch.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(kwargs["input_ids"].shape[1]),
        with_kwargs=True,
    )
    try:
        ours = clap_encoder.embed("text", TEXTS, batch_size=64)
    finally:
        hook.remove()
    tokens = clap_encoder.tokenizer(
        TEXTS, padding="max_length", truncation=True, max_length=77, return_tensors="pt"
    )
    with torch.inference_mode():
        theirs = clap_encoder.model.get_text_embedding(dict(tokens)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-6)
    assert max(seen) == 77 and sorted(seen)[0] <= 30


# --- what `ucl index` says when it is done ---------------------------------------------------


def test_index_summary_says_already_in_the_bank_repeated_and_counts_in_words(tmp_path, loaded):
    path = corpus(tmp_path, ["a dog barks", "rain", "a dog barks", "sirens"])
    first = ucl("index", path, "-b", "words")
    assert first.exit_code == 0, first.output
    assert said(first).startswith(
        "bank words: added 3 items, skipped 1 repeated line; 3 items in total ("
    )
    path = corpus(tmp_path, ["a dog barks", "rain", "sirens", "thunder", "thunder"])
    again = ucl("index", path, "-b", "words")
    assert again.exit_code == 0, again.output
    assert said(again).startswith(
        "bank words: added 1 item, skipped 3 already in the bank and 1 repeated line; "
        "4 items in total ("
    )
    one = tmp_path / "one.txt"
    one.write_bytes(b"only\nbroken \xfe\n")
    single = ucl("index", str(one), "-b", "single")
    assert single.exit_code == 0, single.output
    assert said(single).endswith(
        "bank single: added 1 item, skipped 1 unreadable line; 1 item in total "
        f"({said(single).rsplit('(', 1)[1]}"
    )
    assert "duplicates" not in said(first) + said(again) + said(single)


# --- a failed first run leaves nothing behind -------------------------------------------------


def test_an_empty_corpus_leaves_no_bank_and_no_lock(tmp_path, loaded):
    empty = corpus(tmp_path, [])
    result = ucl("index", empty, "-b", "nothing")
    assert result.exit_code == 1
    assert "holds no text" in said(result)
    assert not (banks_dir() / "nothing").exists()
    given = tmp_path / "given"  # a directory the user made: kept, but empty
    given.mkdir()
    result = ucl("index", empty, "-b", str(given))
    assert result.exit_code == 1
    assert given.is_dir() and list(given.iterdir()) == []


def test_a_bank_with_rows_keeps_its_lock_file_and_a_second_run_works(tmp_path, loaded):
    assert ucl("index", corpus(tmp_path, ["one"]), "-b", "kept").exit_code == 0
    assert (banks_dir() / "kept" / ".lock").exists()
    assert ucl("index", corpus(tmp_path, []), "-b", "kept").exit_code == 1
    assert (banks_dir() / "kept" / ".lock").exists()
    with load_bank(banks_dir() / "kept") as bank:
        assert [item.text for item in bank.items()] == ["one"]


def test_a_waiter_never_holds_a_lock_file_its_holder_removed(tmp_path):
    from ucl_cli.bank.lock import BankLock

    folder = tmp_path / "bank"
    first = BankLock(folder)
    first.acquire()
    second = BankLock(folder)
    waiting = threading.Event()
    second.on_wait = lambda holder: waiting.set()
    waiter = threading.Thread(target=second.acquire)
    waiter.start()
    assert waiting.wait(5)
    time.sleep(0.2)  # the waiter is blocked in flock on the file about to be removed
    first.release(remove_if_empty=True)
    waiter.join(5)
    assert not waiter.is_alive()
    lock = folder / ".lock"
    assert lock.exists()  # the waiter made a new one and holds it, not the removed inode
    assert lock.stat().st_ino == __import__("os").fstat(second._fd).st_ino
    third = BankLock(folder, timeout=0)
    with pytest.raises(Exception, match="is being written by pid"):
        third.acquire()
    second.release(remove_if_empty=True)
    assert not folder.exists()


def test_plain_durations_read_like_a_person_says_them():
    from ucl_cli.commands._progress import duration

    assert [duration(s) for s in (0.4, 45, 60, 100, 3599.6, 3600, 7500)] == [
        "0 s", "45 s", "1 min", "1 min 40 s", "1 h 0 min", "1 h 0 min", "2 h 5 min",
    ]  # fmt: skip
    assert re.fullmatch(r"\d+ s", duration(59.4))
