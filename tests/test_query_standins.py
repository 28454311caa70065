"""`ucl index` + `ucl query` as a user runs them, on the default architectures' random-weight
stand-ins written by scripts/make_test_models.py, with real sample files.

The stand-ins' rankings mean nothing, so the check is that the CLI's scores equal the estimator's
exact bridge score recomputed here from the same encoders, bank and files.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from itertools import pairwise
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image

from ucl_cli import media
from ucl_cli.encoders.registry import DEFAULT_IMAGE_TEXT, DEFAULT_TEXT_AUDIO, load_encoder
from ucl_cli.estimators import bridge_scores

ROOT = Path(__file__).resolve().parent.parent
CAPTIONS = ["a dog barks", "rain on a roof", "a man speaks", "birds sing", "a car passes"]


@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("standins")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "make_test_models.py"), str(root), "--small"],
        check=True,
        capture_output=True,
        timeout=600,
    )
    return root


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    from skimage import data

    root = tmp_path_factory.mktemp("inputs")
    (root / "audio").mkdir()
    Image.fromarray(data.chelsea()).save(root / "cat.png")
    rate = 48_000
    t = np.arange(rate) / rate
    sf.write(root / "audio" / "tone.wav", (0.3 * np.sin(2 * np.pi * 440 * t)).astype("f4"), rate)
    sf.write(
        root / "audio" / "noise.flac", (0.1 * np.random.default_rng(0).standard_normal(rate)), rate
    )
    for speech in sorted(Path("/usr/share/sounds/alsa").glob("Front_*.wav")):
        (root / "audio" / speech.name).write_bytes(speech.read_bytes())
    (root / "captions.txt").write_text("\n".join(CAPTIONS) + "\n")
    return root


def ucl(standins: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HOME": str(standins), "HF_HUB_OFFLINE": "1", "UCL_HOME": str(home)}
    env.pop("HF_HUB_CACHE", None)
    return subprocess.run(
        [sys.executable, "-m", "ucl_cli", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )


def test_index_then_query_gives_the_exact_bridge_scores(standins, inputs, tmp_path, monkeypatch):
    assert len(list((inputs / "audio").iterdir())) >= 3, "sample sounds are missing"
    home = tmp_path / "home"
    indexed = ucl(
        standins, home, "index", str(inputs / "captions.txt"), "--bank", "demo", "--device", "cpu"
    )
    assert indexed.returncode == 0, indexed.stderr
    queried = ucl(
        standins,
        home,
        "query",
        str(inputs / "cat.png"),
        "--candidates",
        str(inputs / "audio"),
        "--bank",
        "demo",
        "--top",
        "0",
        "--device",
        "cpu",
    )
    assert queried.returncode == 0, queried.stderr
    hits = [json.loads(line) for line in queried.stdout.splitlines()]
    assert {Path(h["candidate"]).name for h in hits} == {
        p.name for p in (inputs / "audio").iterdir()
    }

    # Recompute with the same stand-ins, loaded in this process through the production loader.
    monkeypatch.setenv("HF_HOME", str(standins))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    clip, clap = load_encoder(DEFAULT_IMAGE_TEXT), load_encoder(DEFAULT_TEXT_AUDIO)
    query = clip.embed("image", [media.load_image(inputs / "cat.png")])
    rate = clap.preprocessing["sample_rate"]
    paths = [Path(h["candidate"]) for h in hits]
    candidates = clap.embed("audio", [media.load_audio(p, rate) for p in paths])
    left = clip.logit_scale * torch.from_numpy(query @ clip.embed("text", CAPTIONS).T)
    right = clap.logit_scale * torch.from_numpy(clap.embed("text", CAPTIONS) @ candidates.T)
    expected = bridge_scores(left.double(), right.double())[0]
    got = torch.tensor([h["score"] for h in hits], dtype=torch.float64)
    assert torch.allclose(got, expected, atol=1e-3)
    assert all(a["score"] >= b["score"] for a, b in pairwise(hits))
    assert math.isfinite(hits[0]["score"])


def test_audio_query_through_the_builtin_bank(standins, inputs, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    from skimage import data

    for name in ("astronaut", "coffee"):
        Image.fromarray(getattr(data, name)()).save(images / f"{name}.png")
    result = ucl(
        standins,
        tmp_path / "home",
        "query",
        str(inputs / "audio" / "tone.wav"),
        "--candidates",
        str(images),
        "--top",
        "2",
        "--device",
        "cpu",
        "--explain",
        "1",
    )
    assert result.returncode == 0, result.stderr
    hits = [json.loads(line) for line in result.stdout.splitlines()]
    assert [h["rank"] for h in hits] == [1, 2]
    assert hits[0]["bank"].startswith("audioset-")
    assert hits[0]["query_modality"] == "audio" and hits[0]["candidate_modality"] == "image"
    assert 1.0 <= hits[0]["effective_sample_size"] <= 1054


@pytest.mark.slow  # a minute on 2 cores; test_calibrate.py checks calibrate with planted models
def test_calibrate_runs_end_to_end_and_query_then_uses_what_it_stored(standins, inputs, tmp_path):
    from skimage import data

    home = tmp_path / "home"
    indexed = ucl(standins, home, "index", str(inputs / "captions.txt"), "--bank", "demo")
    assert indexed.returncode == 0, indexed.stderr
    sounds = sorted((inputs / "audio").iterdir())[:4]
    rows = ["image,audio,caption"]
    for name, sound in zip(("astronaut", "camera", "coffee", "chelsea"), sounds, strict=True):
        image = tmp_path / f"{name}.png"
        Image.fromarray(getattr(data, name)()).save(image)
        rows.append(f"{image},{sound},a picture of {name}")
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("\n".join(rows) + "\n")
    fitted = ucl(
        standins, home, "calibrate", str(manifest), "--bank", "demo", "--folds", "2",
        "--candidates", "2", "--trials", "3", "--temperatures", "1,0.5", "--device", "cpu",
        "--out", str(tmp_path / "fit.json"),
    )  # fmt: skip
    assert fitted.returncode == 0, fitted.stderr
    assert "ucl: stored in bank demo for image->audio" in fitted.stderr
    record = json.loads((tmp_path / "fit.json").read_text())
    assert record["manifest"]["usable_items"] == 4 and len(record["folds"]) == 2
    stored = record["stored"]

    queried = ucl(
        standins, home, "query", str(tmp_path / "coffee.png"), "--candidates",
        str(inputs / "audio"), "--bank", "demo", "--device", "cpu",
    )  # fmt: skip
    assert queried.returncode == 0, queried.stderr
    hit = json.loads(queried.stdout.splitlines()[0])
    assert hit["temperature"] == stored["temperature"]
    assert hit["normalize"] == stored["normalize"]
    assert queried.stderr.count("calibration stored in bank demo for image->audio") == 1
