"""Headers that lie: a file of a few hundred bytes that claims terabytes of samples, or gigapixels,
is refused from its header before anything is allocated, with one line naming the file and the
claim; in a folder of candidates it is skipped and the rest are ranked."""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import planted_backend as planted
import pytest
import soundfile
from media_samples import (
    ALSA_SOUNDS,
    SPEECH,
    STEREO_OGA,
    assert_one_error,
    png_declaring,
    sample,
    sine,
)
from PIL import Image
from test_query import image_to_audio, index_planted, jsonl, run_query

from ucl_cli.errors import InputFileError
from ucl_cli.media import audio as audio_module
from ucl_cli.media import collect_media, detect_modality, load_audio, load_image, probe_audio

BIGGEST_FLAC_CLAIM = 2**36 - 1  # STREAMINFO holds the total frame count in 36 bits


# --- files whose headers lie -------------------------------------------------------------------


def flac_claiming(path: Path, total_frames: int, *, channels: int = 1, frames: int = 100) -> Path:
    """A valid FLAC of `frames` frames (a quiet 440 Hz tone at 8 kHz) whose STREAMINFO is then
    patched to claim `total_frames` (0: "length unknown", as a FLAC encoder writes when it
    streams to a pipe and cannot go back to fill the header in)."""
    tone = np.repeat(sine(440.0, 8_000, frames, amplitude=0.25)[:, None], channels, axis=1)
    soundfile.write(path, tone, 8_000, format="FLAC", subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    assert raw[:4] == b"fLaC" and raw[4] & 0x7F == 0  # STREAMINFO is the first metadata block
    # STREAMINFO bytes 10..17: 20 bits rate, 3 bits channels - 1, 5 bits depth - 1, 36 bits total.
    field = int.from_bytes(raw[18:26], "big")
    field = (field & ~(2**36 - 1)) | total_frames
    raw[18:26] = field.to_bytes(8, "big")
    path.write_bytes(bytes(raw))
    return path


def _flac_bomb(folder: Path) -> Path:
    return flac_claiming(folder / "bomb.flac", BIGGEST_FLAC_CLAIM, channels=8)


def _flac_bomb_mono(folder: Path) -> Path:
    return flac_claiming(folder / "bomb-mono.flac", BIGGEST_FLAC_CLAIM)


def _flac_claiming_more_than_a_codec_packs(folder: Path) -> Path:
    # Under the size limit, but 100,000,000 samples from a file of a few hundred bytes.
    return flac_claiming(folder / "dense.flac", 100_000_000)


def _flac_claiming_ten_minutes(folder: Path) -> Path:
    # 100 frames that claim 10 minutes at 8 kHz: plausible for the file's size, then short.
    return flac_claiming(folder / "ten-minutes.flac", 4_800_000)


def _wav_claiming_a_large_data_chunk(folder: Path) -> Path:
    path = folder / "claims.wav"
    soundfile.write(path, sine(440.0, 8_000, 800), 8_000, subtype="PCM_16")
    raw = bytearray(path.read_bytes())
    assert raw[36:40] == b"data"
    raw[40:44] = struct.pack("<I", 0x70000000)
    path.write_bytes(bytes(raw))
    return path


def _mp3_claiming(folder: Path) -> Path:
    # libsndfile takes an MP3's length from its Xing/Info tag: patched to 2^32 - 1 MPEG frames.
    path = folder / "claims.mp3"
    soundfile.write(path, sine(440.0, 48_000, 48_000), 48_000, format="MP3")
    raw = bytearray(path.read_bytes())
    tag = max(raw.find(b"Xing"), raw.find(b"Info"))
    assert tag > 0 and struct.unpack_from(">I", raw, tag + 4)[0] & 1  # the frame count is there
    struct.pack_into(">I", raw, tag + 8, 2**32 - 1)
    path.write_bytes(bytes(raw))
    return path


Maker = Callable[[Path], Path]

# (case, maker, refused from the header alone (else only when decoding), exact reason; "{size}"
# is the file's size in bytes).
LYING_AUDIO: list[tuple[str, Maker, bool, str]] = [
    (
        "flac claiming 2^36 frames x 8 channels",
        _flac_bomb,
        True,
        "audio too large: the FLAC header claims 68,719,476,735 frames x 8 channels "
        "(99.4 days at 8,000 Hz; 2.2 TB as float32 samples), over the limit of "
        "1,073,741,824 samples (4.3 GB) per file",
    ),
    (
        "flac claiming 2^36 frames x 1 channel",
        _flac_bomb_mono,
        True,
        "audio too large: the FLAC header claims 68,719,476,735 frames x 1 channel "
        "(99.4 days at 8,000 Hz; 274.9 GB as float32 samples), over the limit of "
        "1,073,741,824 samples (4.3 GB) per file",
    ),
    (
        "flac claiming more samples than its bytes can hold",
        _flac_claiming_more_than_a_codec_packs,
        True,
        "implausible FLAC header: it claims 100,000,000 frames x 1 channel from a file of "
        "{size:,} bytes; no codec packs more than 65,536 samples into a byte",
    ),
    (
        "mp3 whose Xing tag claims 2^32 MPEG frames",
        _mp3_claiming,
        True,
        "audio too large: the MP3 header claims 4,947,802,322,304 frames x 1 channel "
        "(1193.0 days at 48,000 Hz; 19.8 TB as float32 samples), over the limit of "
        "1,073,741,824 samples (4.3 GB) per file",
    ),
    (
        "flac claiming ten minutes, holding 100 frames",
        _flac_claiming_ten_minutes,
        False,
        "truncated FLAC file: the header declares 4,800,000 frames, only 100 could be decoded",
    ),
    (
        "wav claiming a large data chunk",
        _wav_claiming_a_large_data_chunk,
        True,
        "truncated WAV file: the header declares 939,524,096 frames, the file holds 800",
    ),
]


@pytest.mark.parametrize(
    ("maker", "from_header", "reason"),
    [case[1:] for case in LYING_AUDIO],
    ids=[case[0] for case in LYING_AUDIO],
)
def test_a_lying_audio_header_gets_one_precise_error(tmp_path, capfd, maker, from_header, reason):
    path = maker(tmp_path)
    expected = reason.format(size=path.stat().st_size)
    readers = [lambda: load_audio(path, 16_000)]
    if from_header:
        readers += [lambda: probe_audio(path), lambda: detect_modality(path)]
    else:  # the header is plausible for the file's size: only decoding finds the frames missing
        assert detect_modality(path).value == "audio"
    for read in readers:
        assert_one_error(read, path, expected)
    assert capfd.readouterr() == ("", "")  # the library never prints


def test_a_flac_bomb_is_refused_before_allocating(tmp_path):
    path = _flac_bomb(tmp_path)
    assert path.stat().st_size < 1_000
    tracemalloc.start()
    started = time.perf_counter()
    try:
        for read in (probe_audio, detect_modality, lambda path: load_audio(path, 48_000)):
            with pytest.raises(InputFileError, match="audio too large: the FLAC header claims"):
                read(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 5_000_000  # reading what the header claims would take 2.2 TB


def test_a_flac_of_unknown_length_is_read_to_its_end(tmp_path):
    # libsndfile reports such a FLAC as 2^63 - 1 frames long; it must be decoded, not allocated.
    path = flac_claiming(tmp_path / "streamed.flac", 0, channels=2, frames=20_000)
    assert soundfile.info(str(path)).frames == 2**63 - 1
    info = probe_audio(path)
    assert (info.frames, info.seconds, info.channels) == (None, None, 2)
    expected = sine(440.0, 8_000, 20_000, amplitude=0.25)
    samples = load_audio(path, 8_000)
    assert samples.shape == (20_000,)
    np.testing.assert_allclose(samples, expected, atol=1 / 32_768)


def test_audio_over_the_limit_is_refused_and_audio_at_it_is_read(monkeypatch):
    # The limit is on frames x channels; lowered here so that a real 68,545-frame file meets it.
    monkeypatch.setattr(audio_module, "MAX_AUDIO_SAMPLES", 68_545)
    assert load_audio(sample(SPEECH), 48_000).shape == (68_545,)
    monkeypatch.setattr(audio_module, "MAX_AUDIO_SAMPLES", 68_544)
    with pytest.raises(InputFileError) as caught:
        load_audio(SPEECH, 48_000)
    assert caught.value.reason == (
        "audio too large: the WAV header claims 68,545 frames x 1 channel (1.4 s at 48,000 Hz; "
        "274.2 kB as float32 samples), over the limit of 68,544 samples (274.2 kB) per file"
    )


def test_a_flac_of_unknown_length_stops_at_the_limit_while_decoding(tmp_path, monkeypatch):
    path = flac_claiming(tmp_path / "streamed.flac", 0, channels=2, frames=20_000)
    monkeypatch.setattr(audio_module, "MAX_AUDIO_SAMPLES", 30_000)
    monkeypatch.setattr(audio_module, "_BLOCK_SAMPLES", 4_096)
    with pytest.raises(InputFileError) as caught:
        load_audio(path, 8_000)
    assert caught.value.reason == (
        "audio too large: the FLAC file, whose header leaves its length open, decodes to more "
        "than 30,000 samples (120.0 kB as float32), the limit per file"
    )


@pytest.mark.parametrize(
    ("source", "rate"),
    [(SPEECH, 16_000), (STEREO_OGA, 48_000), (ALSA_SOUNDS / "Front_Left.wav", 48_000)],
    ids=lambda value: getattr(value, "name", str(value)),
)
def test_decoding_in_small_blocks_gives_the_samples_of_one_read(monkeypatch, source, rate):
    whole, file_rate = soundfile.read(sample(source), dtype="float32", always_2d=True)
    mono = whole[:, 0] if whole.shape[1] == 1 else whole.mean(axis=1, dtype=np.float64)
    expected = audio_module.resample(mono, file_rate, rate)
    monkeypatch.setattr(audio_module, "_BLOCK_SAMPLES", 1_000)  # dozens of blocks
    np.testing.assert_array_equal(load_audio(source, rate), expected)


def test_a_nan_past_the_first_block_is_found(tmp_path, monkeypatch):
    samples = sine(440.0, 16_000, 16_000)
    samples[8000] = np.nan
    samples[12000] = np.inf
    path = tmp_path / "nan.wav"
    soundfile.write(path, samples, 16_000, subtype="FLOAT")
    monkeypatch.setattr(audio_module, "_BLOCK_SAMPLES", 1_000)
    with pytest.raises(InputFileError) as caught:
        load_audio(path, 16_000)
    assert caught.value.reason == (
        "non-finite audio: 2 of 16,000 samples are NaN or infinite (the first at 0.500 s)"
    )


def _libsndfile_error(*args, **kwargs):
    raise soundfile.LibsndfileError(3, "Error reading ")


def _out_of_memory(*args, **kwargs):
    raise MemoryError


def _absurd_shape(*args, **kwargs):
    raise ValueError("array is too big; `arr.size * arr.dtype.itemsize` is too large")


@pytest.mark.parametrize(
    ("failure", "reason"),
    [
        (_out_of_memory, "out of memory decoding 68,545 frames x 1 channel of WAV audio"),
        (
            _libsndfile_error,
            "corrupt or truncated WAV file: Supported file format but file is malformed",
        ),
        (
            _absurd_shape,
            "corrupt WAV file: array is too big; `arr.size * arr.dtype.itemsize` is too large",
        ),
    ],
    ids=["MemoryError", "LibsndfileError", "ValueError"],
)
def test_a_decoder_failure_is_one_error_not_a_traceback(monkeypatch, failure, reason):
    monkeypatch.setattr(soundfile.SoundFile, "read", failure)
    with pytest.raises(InputFileError) as caught:
        load_audio(sample(SPEECH), 16_000)
    assert (caught.value.path, caught.value.reason) == (str(SPEECH), reason)


def test_running_out_of_memory_while_resampling_is_one_error(monkeypatch):
    monkeypatch.setattr(audio_module.soxr, "resample", _out_of_memory)
    with pytest.raises(InputFileError) as caught:
        load_audio(sample(SPEECH), 16_000)
    assert caught.value.reason == (
        "out of memory resampling 68,545 samples from 48,000 Hz to 16,000 Hz"
    )


# --- images ----------------------------------------------------------------------------------


def _patched(path: Path, edit: Callable[[bytearray], None]) -> Path:
    raw = bytearray(path.read_bytes())
    edit(raw)
    path.write_bytes(bytes(raw))
    return path


def _tiff_claiming(folder: Path) -> Path:
    path = folder / "claims.tif"
    Image.new("RGB", (8, 8), "red").save(path)

    def edit(raw: bytearray) -> None:
        ifd = struct.unpack_from("<I", raw, 4)[0]
        for entry in range(struct.unpack_from("<H", raw, ifd)[0]):
            at = ifd + 2 + 12 * entry
            tag, kind = struct.unpack_from("<HH", raw, at)
            if tag in (256, 257):  # ImageWidth, ImageLength
                struct.pack_into("<H" if kind == 3 else "<I", raw, at + 8, 60_000)

    return _patched(path, edit)


def _gif_claiming(folder: Path) -> Path:
    path = folder / "claims.gif"
    Image.new("P", (8, 8)).save(path)
    return _patched(path, lambda raw: struct.pack_into("<HH", raw, 6, 65_535, 65_535))


def _jpeg_claiming(folder: Path) -> Path:
    path = folder / "claims.jpg"
    Image.new("RGB", (8, 8)).save(path)

    def edit(raw: bytearray) -> None:
        start = raw.find(b"\xff\xc0")  # SOF0: length, precision, height, width
        struct.pack_into(">HH", raw, start + 5, 65_500, 65_500)

    return _patched(path, edit)


def _bmp_claiming(folder: Path) -> Path:
    path = folder / "claims.bmp"
    Image.new("RGB", (8, 8)).save(path)
    return _patched(path, lambda raw: struct.pack_into("<ii", raw, 18, 60_000, 60_000))


def _patched_png(folder: Path, width: int, height: int) -> Path:
    path = folder / "claims.png"
    path.write_bytes(png_declaring(width, height))
    return path


@pytest.mark.parametrize(
    ("maker", "declared"),
    [
        (_tiff_claiming, "3,600,000,000"),
        (_gif_claiming, "4,294,836,225"),
        (_jpeg_claiming, "4,290,250,000"),
        (_bmp_claiming, "3,600,000,000"),
        (lambda folder: _patched_png(folder, 10_000, 10_000), "10000 x 10000 = 100,000,000"),
    ],
    ids=["tiff", "gif", "jpeg", "bmp", "png between the limit and twice it"],
)
def test_an_image_header_claiming_gigapixels_is_refused_before_decoding(tmp_path, maker, declared):
    path = maker(tmp_path)
    tracemalloc.start()
    try:
        with pytest.raises(InputFileError) as caught:
            load_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 5_000_000
    assert caught.value.reason == (
        f"image too large: it declares {declared} pixels, over the limit of 89,478,485 "
        "(a guard against decompression bombs)"
    )


def test_a_later_gif_frame_claiming_a_huge_size_is_never_decoded(tmp_path):
    path = tmp_path / "animated.gif"
    frames = [Image.new("RGB", (8, 8), (80 * i, 0, 0)) for i in range(3)]
    frames[0].save(path, save_all=True, append_images=frames[1:], disposal=2)

    def edit(raw: bytearray) -> None:
        # Each frame: a graphic control extension (21 F9 04 .. .. .. .. 00), then its descriptor.
        descriptors = [at + 8 for at in range(len(raw)) if raw[at : at + 3] == b"\x21\xf9\x04"]
        assert len(descriptors) == 3 and raw[descriptors[1]] == 0x2C
        struct.pack_into("<HH", raw, descriptors[1] + 5, 65_535, 65_535)

    _patched(path, edit)
    tracemalloc.start()
    try:
        image = load_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert image.size == (8, 8) and image.getpixel((0, 0)) == (0, 0, 0)
    assert peak < 5_000_000


def test_running_out_of_memory_decoding_an_image_is_one_error(tmp_path, monkeypatch):
    path = tmp_path / "photo.png"
    Image.new("RGB", (30, 20), "red").save(path)
    monkeypatch.setattr(Image.Image, "load", _out_of_memory)
    with pytest.raises(InputFileError) as caught:
        load_image(path)
    assert caught.value.reason == "out of memory decoding a 30 x 20 RGB PNG image"


# --- through `ucl query` -----------------------------------------------------------------------


@pytest.fixture
def media_dir(tmp_path) -> Path:
    """An image and an audio clip of each concept, as conftest's media_dir, with the audio as FLAC:
    concept 2's FLAC streamed (length unknown), and a FLAC bomb among the candidates."""
    root = planted.write_media(tmp_path / "media", audio_suffix=".flac", subtype="PCM_24")
    _unknown_length(root / "audio" / "concept2.flac")
    _flac_bomb(root / "audio")
    return root


def _unknown_length(path: Path) -> None:
    raw = bytearray(path.read_bytes())
    field = int.from_bytes(raw[18:26], "big") & ~(2**36 - 1)
    raw[18:26] = field.to_bytes(8, "big")
    path.write_bytes(bytes(raw))
    assert soundfile.info(str(path)).frames == 2**63 - 1


@pytest.fixture
def bank(plugin, runner, tmp_path) -> str:
    texts = [f"concept {j}" for j in range(planted.CONCEPTS)] + ["a distractor"]
    index_planted(runner, tmp_path / "corpus.txt", texts, "planted")
    return "planted"


def test_query_skips_a_flac_bomb_with_one_line_and_ranks_the_rest(bank, runner, media_dir):
    bomb = media_dir / "audio" / "bomb.flac"
    for concept in (1, 2):  # concept 2's FLAC has no length in its header
        result = run_query(runner, *image_to_audio(media_dir, bank, concept))
        assert result.exit_code == 0, result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        ranked = [Path(row["candidate"]).name for row in jsonl(result)]
        assert ranked[0] == f"concept{concept}.flac"
        assert sorted(ranked) == [f"concept{j}.flac" for j in range(planted.CONCEPTS)]
        warnings = [line for line in result.stderr.splitlines() if "bomb.flac" in line]
        assert warnings == [
            f"ucl: skipping {bomb}: audio too large: the FLAC header claims 68,719,476,735 "
            "frames x 8 channels (99.4 days at 8,000 Hz; 2.2 TB as float32 samples), over the "
            "limit of 1,073,741,824 samples (4.3 GB) per file"
        ]
        assert "Traceback" not in result.output
        assert "skipped 1 unreadable file\n" in result.stderr


def test_query_with_a_flac_bomb_as_the_query_is_a_one_line_error(bank, runner, media_dir):
    bomb = media_dir / "audio" / "bomb.flac"
    result = run_query(runner, bomb, "--candidates", media_dir / "images", "--bank", bank)
    assert result.exit_code == 1
    assert result.stdout == ""
    assert "Traceback" not in result.output
    assert [line for line in result.stderr.splitlines() if "bomb.flac" in line] == [
        f"ucl: error: {bomb}: audio too large: the FLAC header claims 68,719,476,735 frames x "
        "8 channels (99.4 days at 8,000 Hz; 2.2 TB as float32 samples), over the limit of "
        "1,073,741,824 samples (4.3 GB) per file"
    ]


def test_collecting_a_folder_skips_the_bomb_by_its_header(media_dir):
    warned: list[InputFileError] = []
    collection = collect_media([media_dir / "audio"], on_skip=warned.append)
    assert [path.name for path in collection.paths] == [
        f"concept{j}.flac" for j in range(planted.CONCEPTS)
    ]
    assert [Path(error.path).name for error in warned] == ["bomb.flac"]
