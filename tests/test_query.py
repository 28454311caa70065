"""`ucl query` end to end through the real CLI, with a backend plugged in through an entry point.

The planted backend (tests/planted_backend.py) embeds concept j as e_j in every modality, so the
right ranking and the exact scores are known in closed form:
    same concept:      log(e^(s1+s2) + M - 1) - log M
    different concept: log(e^s1 + e^s2 + M - 2) - log M
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import planted_backend as planted
import pytest
import soundfile as sf

from ucl_cli.cli import app

TESTS = Path(__file__).parent
IMAGE_TEXT, TEXT_AUDIO = "planted:image-text", "planted:text-audio"
BANK_TEXTS = [f"concept {j}" for j in range(planted.CONCEPTS)] + ["a distractor"]
M = len(BANK_TEXTS)
S1, S2 = planted.SCALES[IMAGE_TEXT], planted.SCALES[TEXT_AUDIO]


def expected_score(same_concept: bool) -> float:
    if same_concept:
        return math.log(math.exp(S1 + S2) + M - 1) - math.log(M)
    return math.log(math.exp(S1) + math.exp(S2) + M - 2) - math.log(M)


def index_planted(runner, corpus: Path, texts: list[str], bank: str, *options: str) -> None:
    """`ucl index` of `texts` into `bank` with the planted models."""
    corpus.write_text("\n".join(texts) + "\n")
    result = runner.invoke(
        app,
        [
            "index",
            str(corpus),
            "--bank",
            bank,
            "--image-text-model",
            IMAGE_TEXT,
            "--text-audio-model",
            TEXT_AUDIO,
            "--device",
            "cpu",
            *options,
        ],
    )
    assert result.exit_code == 0, result.output


@pytest.fixture
def bank(plugin, runner, tmp_path) -> str:
    index_planted(runner, tmp_path / "corpus.txt", BANK_TEXTS, "planted")
    return "planted"


def image_to_audio(media_dir: Path, bank: str, concept: int) -> list:
    """The arguments of an image query of `concept` over every audio clip, through `bank`."""
    return [
        media_dir / "images" / f"concept{concept}.png",
        "--candidates",
        media_dir / "audio",
        "--bank",
        bank,
    ]


def run_query(runner, *args, stdin=None):
    result = runner.invoke(app, ["query", "--device", "cpu", *map(str, args)], input=stdin)
    return result


def jsonl(result) -> list[dict]:
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


# --- ranking and scores ----------------------------------------------------------------------


def test_image_query_ranks_the_matching_audio_first_with_exact_scores(bank, runner, media_dir):
    result = run_query(
        runner,
        *image_to_audio(media_dir, bank, 2),
        "--top",
        "0",
    )
    assert result.exit_code == 0, result.output
    hits = jsonl(result)
    assert Path(hits[0]["candidate"]).name == "concept2.wav"
    assert len(hits) == planted.CONCEPTS
    for hit in hits:
        same = Path(hit["candidate"]).name == "concept2.wav"
        assert hit["score"] == pytest.approx(expected_score(same), abs=1e-4)
        assert hit["method"] == "lse" and hit["bank"] == "planted"
        assert hit["query_modality"] == "image" and hit["candidate_modality"] == "audio"
    assert [h["rank"] for h in hits] == list(range(1, planted.CONCEPTS + 1))


def test_audio_query_ranks_images_the_other_way(bank, runner, media_dir):
    result = run_query(
        runner,
        media_dir / "audio" / "concept1.wav",
        "--candidates",
        media_dir / "images",
        "--bank",
        bank,
        "--top",
        "2",
    )
    assert result.exit_code == 0, result.output
    hits = jsonl(result)
    assert Path(hits[0]["candidate"]).name == "concept1.png"
    assert hits[0]["query_modality"] == "audio" and hits[0]["candidate_modality"] == "image"
    # Through CLAP-side scale s2 for the query and CLIP-side s1 for the candidates: symmetric.
    assert hits[0]["score"] == pytest.approx(expected_score(True), abs=1e-4)
    assert len(hits) == 2


def test_several_queries_share_one_run_and_come_back_in_order(bank, runner, media_dir):
    queries = [media_dir / "images" / f"concept{j}.png" for j in (3, 0, 1)]
    result = run_query(
        runner, *queries, "--candidates", media_dir / "audio", "--bank", bank, "--top", "1"
    )
    assert result.exit_code == 0, result.output
    hits = jsonl(result)
    assert [(Path(h["query"]).name, Path(h["candidate"]).name) for h in hits] == [
        ("concept3.png", "concept3.wav"),
        ("concept0.png", "concept0.wav"),
        ("concept1.png", "concept1.wav"),
    ]


def test_query_paths_can_come_from_stdin(bank, runner, media_dir):
    stdin = "\n".join(str(media_dir / "images" / f"concept{j}.png") for j in (1, 2)) + "\n"
    result = run_query(
        runner,
        "-",
        "--candidates",
        media_dir / "audio",
        "--bank",
        bank,
        "--top",
        "1",
        "--format",
        "paths",
        stdin=stdin,
    )
    assert result.exit_code == 0, result.output
    assert [Path(line).name for line in result.stdout.splitlines()] == [
        "concept1.wav",
        "concept2.wav",
    ]


def test_topk_certifies_the_same_top_results_as_lse(bank, runner, media_dir):
    args = [
        *image_to_audio(media_dir, bank, 4),
        "--top",
        "1",
    ]
    exact = jsonl(run_query(runner, *args))
    approx = run_query(runner, *args, "--method", "topk", "--nearest", "2")
    assert approx.exit_code == 0, approx.output
    [hit] = jsonl(approx)
    assert hit["candidate"] == exact[0]["candidate"]
    assert hit["certified"] is True
    assert hit["lower"] - 1e-4 <= exact[0]["score"] <= hit["upper"] + 1e-4


def test_the_old_k_flags_still_set_topks_nearest_rows(bank, runner, media_dir, monkeypatch):
    # --nearest and --nearest-max were --k and --k-max (k also named the candidates' count).
    from ucl_cli.bridge import pipeline

    seen = []
    real = pipeline.search_inputs

    def spy(inputs, **kwargs):
        seen.append(kwargs["options"].scoring)
        return real(inputs, **kwargs)

    monkeypatch.setattr(pipeline, "search_inputs", spy)
    args = [*image_to_audio(media_dir, bank, 4), "--top", "1", "--method", "topk"]
    for flags in (["--nearest", "2", "--nearest-max", "3"], ["--k", "2", "--k-max", "3"]):
        result = run_query(runner, *args, *flags)
        assert result.exit_code == 0, result.output
    assert [(s.nearest_rows, s.max_nearest_rows) for s in seen] == [(2, 3), (2, 3)]


def test_topk_through_an_ivf_bank_certifies_from_the_scans_ucl_index_saved(
    plugin, runner, media_dir, tmp_path
):
    # A bank big enough for an inverted file: the concepts plus 300 neutral texts, IVF4,Flat.
    texts = BANK_TEXTS + [f"neutral text {i}" for i in range(300)]
    index_planted(runner, tmp_path / "ivf.txt", texts, "planted-ivf", "--faiss-index", "IVF4,Flat")
    scans = sorted((Path(os.environ["UCL_HOME"]) / "index-bounds").glob("*.npz"))
    # `ucl index` saved each model's index scan for topk's queries, by content hash: the two
    # planted models embed texts identically, so their indexes are one file here.
    assert len(scans) == 1
    args = [*image_to_audio(media_dir, "planted-ivf", 3), "--top", "1"]
    [exact] = jsonl(run_query(runner, *args))
    result = run_query(runner, *args, "--method", "topk", "--nearest", "2")
    assert result.exit_code == 0, result.output
    [hit] = jsonl(result)
    assert hit["candidate"] == exact["candidate"] and hit["candidate"].endswith("concept3.wav")
    assert hit["certified"] is True
    assert hit["lower"] - 1e-4 <= exact["score"] <= hit["upper"] + 1e-4
    cleared = runner.invoke(app, ["cache", "clear"])
    assert cleared.exit_code == 0, cleared.output
    assert "removed 1 saved index scan from" in cleared.output
    assert not any(scan.exists() for scan in scans)


def test_caption_method_goes_through_the_nearest_bank_text(bank, runner, media_dir):
    result = run_query(
        runner,
        *image_to_audio(media_dir, bank, 3),
        "--method",
        "caption",
        "--top",
        "2",
    )
    assert result.exit_code == 0, result.output
    first, second = jsonl(result)
    assert first["caption"] == "concept 3"
    assert Path(first["candidate"]).name == "concept3.wav"
    assert first["score"] == pytest.approx(S2, abs=1e-4)  # s2 * cos(e_3, e_3)
    assert second["score"] == pytest.approx(0.0, abs=1e-4)


def test_direct_is_refused_between_unrelated_models_unless_forced(bank, runner, media_dir):
    args = [
        *image_to_audio(media_dir, bank, 2),
        "--method",
        "direct",
        "--top",
        "1",
    ]
    refused = run_query(runner, *args)
    assert refused.exit_code == 2
    assert "trained separately" in refused.stderr and "--force-direct" in refused.stderr
    forced = run_query(runner, *args, "--force-direct")
    assert forced.exit_code == 0, forced.output
    [hit] = jsonl(forced)
    assert Path(hit["candidate"]).name == "concept2.wav"
    assert hit["score"] == pytest.approx(1.0, abs=1e-6)  # cosine of e_2 with e_2


def test_explain_names_the_bank_items_that_carried_the_score(bank, runner, media_dir):
    result = run_query(
        runner,
        *image_to_audio(media_dir, bank, 5),
        "--top",
        "1",
        "--explain",
        "2",
    )
    assert result.exit_code == 0, result.output
    [hit] = jsonl(result)
    top_item = hit["bridge"][0]
    assert top_item["text"] == "concept 5"
    share = math.exp(S1 + S2) / (math.exp(S1 + S2) + M - 1)
    assert top_item["weight"] == pytest.approx(share, rel=1e-5)
    weights = [share] + [1 / (math.exp(S1 + S2) + M - 1)] * (M - 1)
    ess = 1 / sum(w * w for w in weights)
    assert hit["effective_sample_size"] == pytest.approx(ess, rel=1e-4)


# --- output formats --------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["table", "tsv", "paths", "jsonl"])
def test_every_format_carries_the_ranking(bank, runner, media_dir, fmt):
    result = run_query(
        runner,
        *image_to_audio(media_dir, bank, 1),
        "--top",
        "2",
        "--format",
        fmt,
    )
    assert result.exit_code == 0, result.output
    out = result.stdout
    if fmt == "tsv":
        header, first, _ = out.splitlines()
        assert header.split("\t") == ["query", "rank", "candidate", "score", "method"]
        assert first.split("\t")[1:3] == ["1", str(media_dir / "audio" / "concept1.wav")]
        assert float(first.split("\t")[3]) == pytest.approx(expected_score(True), abs=1e-4)
    elif fmt == "paths":
        assert out.splitlines()[0] == str(media_dir / "audio" / "concept1.wav")
    elif fmt == "table":
        assert "concept1.wav" in out and "rank" in out
    else:
        assert len(jsonl(result)) == 2
    assert "ranked 6 candidates" in result.stderr  # progress and summary on stderr only
    assert "ranked" not in out


# --- the cache -------------------------------------------------------------------------------


def test_second_query_over_the_same_folder_embeds_nothing(bank, runner, media_dir):
    args = [
        *image_to_audio(media_dir, bank, 1),
        "--top",
        "1",
    ]
    first = run_query(runner, *args)
    assert "embedded 7 files, 0 from the cache" in first.stderr
    second = run_query(runner, *args)
    assert "embedded 0 files, 7 from the cache" in second.stderr
    assert jsonl(second) == jsonl(first)


def test_a_changed_candidate_is_embedded_again(bank, runner, media_dir):
    args = [
        *image_to_audio(media_dir, bank, 1),
        "--top",
        "1",
    ]
    run_query(runner, *args)
    samples = np.full(planted.SAMPLE_RATE // 2, 2 / 20, dtype=np.float32)  # now concept 1
    sf.write(media_dir / "audio" / "concept5.wav", samples, planted.SAMPLE_RATE, subtype="FLOAT")
    again = run_query(runner, *args, "--top", "2")
    assert "embedded 1 file, 6 from the cache" in again.stderr
    names = sorted(Path(h["candidate"]).name for h in jsonl(again))
    assert names == ["concept1.wav", "concept5.wav"]


# --- errors ----------------------------------------------------------------------------------


def test_missing_bank_is_a_clear_error(plugin, runner, media_dir):
    result = run_query(
        runner,
        media_dir / "images" / "concept1.png",
        "--candidates",
        media_dir / "audio",
        "--bank",
        "nowhere",
    )
    assert result.exit_code == 1
    assert "no bank at" in result.stderr and "ucl index --bank nowhere" in result.stderr
    assert result.stdout == ""


def test_a_bank_built_with_other_models_is_refused_naming_both(bank, runner, media_dir):
    result = run_query(
        runner,
        *image_to_audio(media_dir, bank, 1),
        "--text-audio-model",
        "planted:joint",
    )
    assert result.exit_code == 1
    assert "planted:joint" in result.stderr and "planted:text-audio" in result.stderr


def test_empty_candidate_folder_is_a_usage_error(bank, runner, media_dir, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_query(
        runner, media_dir / "images" / "concept1.png", "--candidates", empty, "--bank", bank
    )
    assert result.exit_code == 2
    assert "no usable candidate" in result.stderr and str(empty) in result.stderr


def test_a_query_that_is_not_media_names_the_file(bank, runner, media_dir, tmp_path):
    notes = tmp_path / "notes.jpg"
    notes.write_text("hello, this is not an image")
    result = run_query(runner, notes, "--candidates", media_dir / "audio", "--bank", bank)
    assert result.exit_code == 1
    assert str(notes) in result.stderr and "not" in result.stderr
    assert result.stdout == ""


def test_bad_candidates_are_skipped_with_a_warning_or_fail_with_strict(bank, runner, media_dir):
    (media_dir / "audio" / "broken.wav").write_bytes(b"RIFF\x00\x00")
    args = [
        *image_to_audio(media_dir, bank, 1),
        "--top",
        "1",
    ]
    lenient = run_query(runner, *args)
    assert lenient.exit_code == 0, lenient.output
    assert "skipping" in lenient.stderr and "broken.wav" in lenient.stderr
    assert "skipped 1 unreadable file" in lenient.stderr
    assert Path(jsonl(lenient)[0]["candidate"]).name == "concept1.wav"
    strict = run_query(runner, *args, "--strict")
    assert strict.exit_code == 1
    assert "broken.wav" in strict.stderr


def test_unknown_method_and_format_are_usage_errors(bank, runner, media_dir):
    base = [media_dir / "images" / "concept1.png", "--candidates", media_dir / "audio"]
    assert run_query(runner, *base, "--method", "magic").exit_code == 2
    assert run_query(runner, *base, "--format", "xml").exit_code == 2


# --- as a subprocess, the way a shell pipeline runs it ----------------------------------------


def test_subprocess_pipeline_gets_json_lines_on_stdout_only(bank, plugin, media_dir, ucl_home):
    env = {
        **os.environ,
        "UCL_HOME": str(ucl_home),
        "PYTHONPATH": os.pathsep.join([str(plugin), str(TESTS), os.environ.get("PYTHONPATH", "")]),
    }
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "ucl_cli",
            "query",
            str(media_dir / "images" / "concept0.png"),
            "--candidates",
            str(media_dir / "audio"),
            "--bank",
            bank,
            "--top",
            "3",
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    lines = completed.stdout.splitlines()
    assert len(lines) == 3
    assert Path(json.loads(lines[0])["candidate"]).name == "concept0.wav"
    assert "ranked 6 candidates" in completed.stderr
