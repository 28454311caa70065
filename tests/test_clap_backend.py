"""The laion_clap backend through the production loading path, offline, with a small random-weight
stand-in of the default CLAP (and of roberta-base's files) in a temporary hub cache, and the
deterministic audio pipeline of clap_audio against references."""

from __future__ import annotations

import math
import sys
import time

import librosa
import model_fixtures
import numpy as np
import pytest
import torch
from model_fixtures import SAMPLE_RATE, tone

from ucl_cli.encoders import clap_audio
from ucl_cli.encoders.checkpoints import (
    IncompatibleWeightsError,
    UnsafeCheckpointError,
    load_strict,
    read_checkpoint,
    read_state_dict,
)
from ucl_cli.encoders.clap_backend import ClapEncoder, fit_state_dict
from ucl_cli.encoders.hub import MissingModelFileError
from ucl_cli.encoders.registry import DEFAULT_TEXT_AUDIO, get_spec, load_encoder
from ucl_cli.errors import UnknownModelError, UsageError
from ucl_cli.testing.standins import CLAP_LOGIT_SCALE, write_clap, write_hub_file

TEN_S = 10 * SAMPLE_RATE
SETTINGS = clap_audio.AudioSettings()


def checkpoint_path(root):
    return model_fixtures.snapshot(root, "lukewys/laion_clap") / "630k-audioset-best.pt"


# --- loading -------------------------------------------------------------------------------------


def test_default_key_loads_offline_without_importing_the_laion_clap_package(clap_encoder):
    assert isinstance(clap_encoder, ClapEncoder)
    assert clap_encoder.key == DEFAULT_TEXT_AUDIO and clap_encoder.dim == 512
    assert clap_encoder.preprocessing["sample_rate"] == 48_000
    assert clap_encoder.preprocessing["crop"] == "center"
    # laion_clap/__init__ would have imported training/data.py, which fetches three tokenizers.
    assert "laion_clap.training.data" not in sys.modules


def test_logit_scale_is_read_from_the_weights_and_can_be_overridden(clap_encoder, clap_hub):
    # laion_clap initialises logit_scale_a to 1/0.07; the stand-in stores another value.
    assert clap_encoder.logit_scale == pytest.approx(CLAP_LOGIT_SCALE, rel=1e-5)
    assert not math.isclose(clap_encoder.logit_scale, 1 / 0.07, rel_tol=1e-3)
    assert load_encoder(DEFAULT_TEXT_AUDIO, logit_scale=12.5).logit_scale == 12.5


def test_text_batch_of_one_works_and_matches_larger_batches(clap_encoder):
    texts = ["a dog barks", "rain on a tin roof", "an engine idles"]
    many = clap_encoder.embed("text", texts)
    one = clap_encoder.embed("text", ["rain on a tin roof"])
    assert one.shape == (1, 512) and one.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(one[0], many[1], atol=1e-5)
    # The same numbers as laion_clap's own CLAP.get_text_embedding on the same tokens.
    tokens = clap_encoder.tokenizer(
        texts, padding="max_length", truncation=True, max_length=77, return_tensors="pt"
    )
    with torch.no_grad():
        theirs = clap_encoder.model.get_text_embedding(dict(tokens)).numpy()
    np.testing.assert_allclose(many, theirs, atol=1e-5)


def test_audio_is_deterministic_and_long_clips_are_center_cropped(clap_encoder):
    long = tone(12.5, seed=1)
    short = tone(3.0, freq=880.0, seed=2)
    centre = long[(len(long) - TEN_S) // 2 :][:TEN_S]
    padded = np.concatenate([short, short, short, np.zeros(TEN_S - 3 * len(short), np.float32)])
    vectors = clap_encoder.embed("audio", [long, centre, short, padded])
    assert vectors.shape == (4, 512) and vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(vectors[0], vectors[1], atol=1e-5)  # > 10 s: the centred 10 s
    np.testing.assert_allclose(vectors[2], vectors[3], atol=1e-5)  # < 10 s: repeat, then pad
    again = clap_encoder.embed("audio", [long])  # same clip again (another batch): same vector
    np.testing.assert_allclose(again[0], vectors[0], atol=1e-5)
    assert not np.allclose(vectors[0], vectors[2], atol=1e-3)


def test_the_old_position_ids_key_is_dropped_and_loading_is_strict(clap_encoder, clap_root):
    path = checkpoint_path(clap_root)
    raw = read_checkpoint(path)["state_dict"]
    assert "module.text_branch.embeddings.position_ids" in raw  # as in the real checkpoints
    state = fit_state_dict(clap_encoder.model, read_state_dict(path))
    assert "text_branch.embeddings.position_ids" not in state
    load_strict(clap_encoder.model, state, path, "CLAP")  # every other key fits exactly
    broken = dict(state)
    del broken["logit_scale_a"]
    broken["audio_branch.extra"] = torch.zeros(1)
    with pytest.raises(IncompatibleWeightsError) as err:
        load_strict(clap_encoder.model, broken, path, "CLAP")
    assert "logit_scale_a" in str(err.value) and "audio_branch.extra" in str(err.value)


def test_a_partial_checkpoint_is_an_error_through_load_encoder(clap_root, clap_hub, tmp_path):
    state = read_state_dict(checkpoint_path(clap_root))
    del state["audio_projection.0.weight"]
    partial = tmp_path / "partial.pt"
    torch.save({"state_dict": state}, partial)
    with pytest.raises(IncompatibleWeightsError, match=r"audio_projection\.0\.weight"):
        load_encoder(DEFAULT_TEXT_AUDIO, weights=partial)


def test_a_pickled_object_is_refused_before_any_model_is_built(clap_hub, tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"state_dict": {"w": torch.ones(1)}, "args": _Namespace()}, path)
    start = time.perf_counter()
    with pytest.raises(UnsafeCheckpointError, match="refusing to load"):
        load_encoder(DEFAULT_TEXT_AUDIO, weights=path)
    assert time.perf_counter() - start < 5


class _Namespace:
    """Stands for the argparse.Namespace some training scripts pickle next to the weights."""


def test_missing_text_tower_files_fail_fast_and_name_the_repo(empty_hub):
    write_hub_file(
        empty_hub / "hub",
        "lukewys/laion_clap",
        "630k-audioset-best.pt",
        lambda p: p.write_bytes(b"x"),
    )
    start = time.perf_counter()
    with pytest.raises(MissingModelFileError) as err:
        load_encoder(DEFAULT_TEXT_AUDIO)
    assert time.perf_counter() - start < 5
    message = str(err.value)
    assert "config.json, vocab.json, merges.txt (hub repo roberta-base)" in message
    assert (
        "630k-audioset-best.pt"
        not in message.split("missing from the model cache")[1].split(".")[0]
    )
    assert "hf download roberta-base config.json vocab.json merges.txt" in message


def test_generic_keys_name_laion_clap_architectures():
    spec = get_spec("clap:HTSAT-base+fusion")
    assert spec.architecture == "HTSAT-base" and spec.options["fusion"] and spec.weights is None
    with pytest.raises(UnknownModelError, match="clap:HTSAT-tiny"):
        get_spec("clap:HTSAT-tiyn")


# --- the audio pipeline --------------------------------------------------------------------------


def test_repeat_pad_center_crop_and_quantisation():
    clip = np.array([0.1, -0.2, 0.3], dtype=np.float32)
    expected = np.array([0.1, -0.2, 0.3] * 2 + [0, 0], dtype=np.float32)
    np.testing.assert_array_equal(clap_audio.repeat_pad(clip, 8), expected)
    np.testing.assert_array_equal(clap_audio.center_crop(np.arange(10), 4), [3, 4, 5, 6])
    quantized = clap_audio.quantize_int16(np.array([2.0, -1.0, 0.5], dtype=np.float32))
    np.testing.assert_allclose(quantized, [1.0, -1.0, 16383 / 32767], rtol=1e-7)
    item = clap_audio.prepare(tone(0.5), SETTINGS)
    assert item["waveform"].shape == (TEN_S,) and item["longer"].tolist() == [False]
    assert set(item) == {"waveform", "longer"}


@pytest.mark.parametrize(
    ("bad", "message"),
    [(np.zeros(0), "empty"), (np.zeros((2, 10)), "1-D"), (np.array([0.0, np.nan]), "NaN")],
)
def test_bad_audio_is_a_usage_error(bad, message):
    with pytest.raises(UsageError, match=message):
        clap_audio.prepare(bad, SETTINGS)


def test_log_mel_matches_librosa_in_float64():
    audio = tone(1.0, seed=3).astype(np.float64)
    ours = clap_audio.log_mel(torch.from_numpy(audio), SETTINGS).numpy()
    power = librosa.feature.melspectrogram(
        y=audio,
        sr=48_000,
        n_fft=1024,
        hop_length=480,
        win_length=1024,
        center=True,
        pad_mode="reflect",
        power=2.0,
        n_mels=64,
        norm=None,
        htk=True,
        fmin=50,
        fmax=14_000,
    )
    reference = (10 * np.log10(np.maximum(power, 1e-10))).T
    assert ours.shape == reference.shape == (1 + len(audio) // 480, 64)
    np.testing.assert_allclose(ours, reference, atol=1e-6)


def test_fusion_input_is_deterministic_and_marks_long_clips():
    fusion = clap_audio.AudioSettings(fusion=True)
    long = clap_audio.prepare(tone(21.0, seed=4), fusion)
    again = clap_audio.prepare(tone(21.0, seed=4), fusion)
    assert long["mel_fusion"].shape == (4, 1001, 64) and long["longer"].tolist() == [True]
    torch.testing.assert_close(long["mel_fusion"], again["mel_fusion"], rtol=0, atol=0)
    assert long["waveform"].shape == (TEN_S,)
    short = clap_audio.prepare(tone(4.0), fusion)
    assert short["longer"].tolist() == [False]
    torch.testing.assert_close(short["mel_fusion"][0], short["mel_fusion"][3])
    # The centre chunk of a long clip is the mel of its middle.
    full = clap_audio.log_mel(
        torch.from_numpy(clap_audio.quantize_int16(tone(21.0, seed=4))), fusion
    )
    starts = np.array_split(np.arange(full.shape[0] - 1001 + 1), 3)
    middle = int(starts[1][len(starts[1]) // 2])
    torch.testing.assert_close(long["mel_fusion"][2], full[middle : middle + 1001])


@pytest.mark.slow
def test_fusion_checkpoint_loads_and_embeds_long_clips_deterministically(tmp_path, monkeypatch):
    write_clap(tmp_path, small=True, key="clap:630k-audioset-fusion-best")
    model_fixtures.use_hub(monkeypatch, tmp_path)
    encoder = load_encoder("clap:630k-audioset-fusion-best")
    clips = [tone(15.0, seed=5), tone(2.0, seed=6), tone(15.0, seed=5)]
    vectors = encoder.embed("audio", clips)
    assert vectors.shape == (3, 512)
    np.testing.assert_allclose(vectors[0], vectors[2], atol=1e-6)
    assert encoder.embed("text", ["one"]).shape == (1, 512)


@pytest.mark.gpu
def test_runs_on_cuda_with_the_same_embeddings(clap_encoder, clap_hub):
    assert clap_encoder.key == DEFAULT_TEXT_AUDIO
    model_fixtures.assert_same_on_cuda(
        clap_encoder, "audio", [tone(12.0, seed=7), tone(1.5, seed=8)]
    )
