"""ucl_cli.media: real images and sounds in every supported format, and one exact error per bad
file."""

from __future__ import annotations

import shutil
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import scipy.signal
import soundfile
import soxr
from media_samples import (
    ALSA_SOUNDS,
    FREEDESKTOP_SOUNDS,
    MATPLOTLIB_DATA,
    SKIMAGE_DATA,
    SPEECH,
    STEREO_OGA,
    assert_one_error,
    open_image,
    png_declaring,
    sample,
    sine,
    speech_wav,
    truncated_copy,
)
from PIL import Image

from ucl_cli.errors import InputFileError
from ucl_cli.media import (
    collect_media,
    detect_modality,
    load_audio,
    load_image,
    loader_for,
    probe_audio,
    resample,
)
from ucl_cli.modality import Modality

SUPPORTED = (
    "ucl reads images (any format Pillow reads) and audio (wav, flac, ogg/oga with vorbis or opus, "
    "mp3)"
)


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.int16)


# --- images ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        SKIMAGE_DATA / "astronaut.png",  # RGB
        SKIMAGE_DATA / "camera.png",  # greyscale
        SKIMAGE_DATA / "rocket.jpg",
        SKIMAGE_DATA / "hubble_deep_field.jpg",
        SKIMAGE_DATA / "multipage.tif",
        MATPLOTLIB_DATA / "grace_hopper.jpg",
    ],
    ids=lambda path: path.name,
)
def test_load_image_gives_the_same_pixels_as_pillow_in_rgb(source):
    image = load_image(sample(source))
    with Image.open(source) as reference:
        expected = reference.convert("RGB")
    assert image.mode == "RGB"
    assert image.size == expected.size
    np.testing.assert_array_equal(pixels(image), pixels(expected))


@pytest.mark.parametrize("extension", ["png", "bmp", "tiff", "webp", "gif", "ppm", "jpeg"])
def test_load_image_reads_every_format_pillow_writes(tmp_path, extension):
    original = open_image(sample(SKIMAGE_DATA / "chelsea.png")).convert("RGB")
    path = tmp_path / f"chelsea.{extension}"
    lossless = {"webp": {"lossless": True}, "jpeg": {"quality": 95}}.get(extension, {})
    original.save(path, **lossless)
    image = load_image(path)
    assert image.size == (451, 300)
    difference = np.abs(pixels(image) - pixels(original)).mean()
    if extension == "jpeg":
        assert difference < 3
    elif extension == "gif":  # 256-colour palette
        assert difference < 12
    else:
        assert difference == 0


def test_exif_orientation_is_applied(tmp_path):
    # A 64 x 32 crop saved with EXIF orientation 6 ("rotate 90 degrees clockwise to display").
    crop = (
        open_image(sample(SKIMAGE_DATA / "astronaut.png")).convert("RGB").crop((100, 50, 164, 82))
    )
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.png"
    crop.save(path, exif=exif.tobytes())
    image = load_image(path)
    assert image.size == (32, 64)
    np.testing.assert_array_equal(pixels(image), pixels(crop.transpose(Image.Transpose.ROTATE_270)))


@pytest.mark.parametrize(
    ("name", "to_deep", "mode"),
    [
        ("camera16.png", lambda grey: grey.astype(np.uint16) * 257, "I;16"),
        ("camera32.tif", lambda grey: grey.astype(np.int32) * 257, "I"),
        ("camera-float.tif", lambda grey: grey.astype(np.float32) / 255, "F"),
    ],
)
def test_deep_grey_images_are_scaled_not_clipped(tmp_path, name, to_deep, mode):
    camera = np.asarray(open_image(sample(SKIMAGE_DATA / "camera.png")))  # uint8
    path = tmp_path / name
    Image.fromarray(to_deep(camera)).save(path)  # the same picture, deeper
    assert open_image(path).mode == mode
    image = load_image(path)
    np.testing.assert_array_equal(pixels(image)[..., 0], camera)
    np.testing.assert_array_equal(pixels(image)[..., 2], camera)


def test_transparent_pixels_are_composited_over_white():
    source = sample(MATPLOTLIB_DATA / "logo2.png")
    rgba = np.asarray(open_image(source).convert("RGBA"), dtype=np.float64)
    transparent = rgba[..., 3] == 0
    assert transparent.mean() > 0.5 and ((rgba[..., 3] > 0) & (rgba[..., 3] < 255)).any()
    # A plain convert("RGB") would show the colour stored under alpha 0, which is not white.
    assert (rgba[transparent][:, :3] != 255).any()
    alpha = rgba[..., 3:] / 255.0
    expected = rgba[..., :3] * alpha + 255.0 * (1.0 - alpha)
    image = load_image(source)
    assert np.abs(pixels(image) - expected).max() <= 1.0
    assert (pixels(image)[transparent] == 255).all()


def test_animated_gif_gives_its_first_frame():
    source = sample(SKIMAGE_DATA / "no_time_for_that_tiny.gif")
    with Image.open(source) as reference:
        assert reference.n_frames > 1
        first = reference.convert("RGB")
    image = load_image(source)
    np.testing.assert_array_equal(pixels(image), pixels(first))


def test_loaded_image_is_detached_from_its_file(tmp_path):
    path = tmp_path / "astronaut.png"
    shutil.copy(sample(SKIMAGE_DATA / "astronaut.png"), path)
    image = load_image(path)
    path.unlink()
    assert image.getpixel((0, 0)) == (154, 147, 151)


def test_decompression_bomb_fails_fast_without_allocating(tmp_path):
    path = tmp_path / "bomb.png"
    path.write_bytes(png_declaring(100_000, 100_000))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        with pytest.raises(InputFileError) as caught:
            load_image(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - started < 1.0
    assert peak < 5_000_000  # 100000 x 100000 RGB would be 30 GB
    assert caught.value.reason == (
        "image too large: it declares 10,000,000,000 pixels, over the limit of 89,478,485 "
        "(a guard against decompression bombs)"
    )


def test_bomb_limit_can_be_lowered_and_names_the_declared_size():
    with pytest.raises(InputFileError) as caught:
        load_image(sample(SKIMAGE_DATA / "astronaut.png"), max_pixels=100_000)
    assert caught.value.reason == (
        "image too large: it declares 512 x 512 = 262,144 pixels, over the limit of 100,000 "
        "(a guard against decompression bombs)"
    )


# --- audio -----------------------------------------------------------------------------------


def test_wav_at_its_own_rate_is_the_file_samples():
    samples = load_audio(sample(SPEECH), 48_000)
    expected, rate = soundfile.read(SPEECH, dtype="float32")
    assert rate == 48_000
    assert samples.dtype == np.float32 and samples.shape == (68_545,)
    np.testing.assert_array_equal(samples, expected)


def test_speech_is_resampled_to_the_model_rate():
    samples = load_audio(sample(SPEECH), 16_000)
    assert samples.shape == (round(68_545 / 3),)
    expected = soxr.resample(soundfile.read(SPEECH, dtype="float32")[0], 48_000, 16_000, "HQ")
    np.testing.assert_array_equal(samples, expected)


def test_stereo_vorbis_is_mixed_to_the_mean_of_its_channels():
    info = probe_audio(sample(STEREO_OGA))
    assert (info.format, info.subtype, info.channels) == ("OGG", "VORBIS", 2)
    assert (info.sample_rate, info.frames) == (96_000, 83_734)
    stereo, _ = soundfile.read(STEREO_OGA, dtype="float32", always_2d=True)
    assert np.abs(stereo[:, 0] - stereo[:, 1]).max() > 1.0  # the channels differ
    mono = load_audio(STEREO_OGA, 96_000)
    np.testing.assert_allclose(mono, stereo.mean(axis=1), atol=1e-7)
    assert load_audio(STEREO_OGA, 48_000).shape == (83_734 // 2,)


def test_stereo_speech_is_mixed_exactly(tmp_path):
    left, rate = soundfile.read(sample(ALSA_SOUNDS / "Front_Left.wav"), dtype="float32")
    right, _ = soundfile.read(sample(ALSA_SOUNDS / "Front_Right.wav"), dtype="float32")
    frames = min(len(left), len(right))
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left[:frames], right[:frames]], axis=1), rate, subtype="FLOAT")
    expected = ((left[:frames].astype(np.float64) + right[:frames]) / 2).astype(np.float32)
    np.testing.assert_array_equal(load_audio(path, rate), expected)


def test_a_cut_off_ogg_decodes_as_a_shorter_clip(tmp_path):
    # Ogg, like MP3, has no length in its header: libsndfile reads up to the last whole page,
    # so a cut-off download cannot be told from a shorter recording.
    cut = truncated_copy(sample(STEREO_OGA), tmp_path / "cut.oga")
    full, part = load_audio(STEREO_OGA, 96_000), load_audio(cut, 96_000)
    assert 0 < len(part) < len(full)
    np.testing.assert_allclose(part[:1000], full[:1000], atol=1e-6)


@pytest.mark.parametrize(
    ("extension", "file_format", "subtype", "tolerance"),
    [
        ("flac", "FLAC", "PCM_16", 0.0),
        ("wav", "WAV", "FLOAT", 0.0),
        ("ogg", "OGG", "VORBIS", None),
        ("oga", "OGG", "VORBIS", None),
        ("opus", "OGG", "OPUS", None),
        ("mp3", "MP3", "MPEG_LAYER_III", None),
    ],
)
def test_every_audio_format_keeps_the_signal(tmp_path, extension, file_format, subtype, tolerance):
    speech, rate = soundfile.read(sample(SPEECH), dtype="float32")
    path = tmp_path / f"speech.{extension}"
    soundfile.write(path, speech, rate, format=file_format, subtype=subtype)
    samples = load_audio(path, 48_000)
    if tolerance is not None:  # lossless
        assert samples.shape == speech.shape
        np.testing.assert_allclose(samples, speech, atol=tolerance)
        return
    # Lossy codecs: same length within one codec frame, and the same waveform (best alignment).
    assert abs(len(samples) - len(speech)) <= 1152
    n = min(len(samples), len(speech)) - 2000
    lags = scipy.signal.correlate(samples[: n + 2000], speech[:n], mode="valid", method="fft")
    lag = int(np.argmax(lags))  # the codec's delay, if any
    assert lag < 2000
    assert np.corrcoef(samples[lag : lag + n], speech[:n])[0, 1] > 0.99


def test_resampling_keeps_frequency_amplitude_and_exact_length():
    one_second = sine(1000.0, 48_000, 48_000, amplitude=0.5)
    out = resample(one_second, 48_000, 16_000)
    assert out.dtype == np.float32 and out.shape == (16_000,)
    spectrum = np.abs(np.fft.rfft(out))
    assert np.argmax(spectrum) == 1000  # bin width 1 Hz over one second
    # Away from the edges it is the 1 kHz sine sampled at 16 kHz, to within 1e-3.
    middle = slice(1000, 15_000)
    expected = sine(1000.0, 16_000, 16_000, amplitude=0.5)
    assert np.abs(out[middle] - expected[middle]).max() < 1e-3
    assert abs(np.abs(out[middle]).max() - 0.5) < 1e-3
    assert resample(sine(440.0, 44_100, 44_100), 44_100, 48_000).shape == (48_000,)


def test_resampling_filters_what_the_new_rate_cannot_hold():
    # 10 kHz is above the 8 kHz Nyquist limit of 16 kHz: a naive decimation would alias it to
    # 6 kHz at full strength; a proper resampler removes it.
    out = resample(sine(10_000.0, 48_000, 48_000, amplitude=0.5), 48_000, 16_000)
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) < 1e-3


def test_resampled_file_keeps_the_sine(tmp_path):
    path = tmp_path / "tone.flac"
    soundfile.write(path, sine(1000.0, 48_000, 48_000), 48_000, subtype="PCM_24")
    out = load_audio(path, 16_000)
    assert out.shape == (16_000,)
    assert np.argmax(np.abs(np.fft.rfft(out))) == 1000
    assert abs(np.sqrt(np.mean(out[1000:-1000] ** 2)) - 0.5 / np.sqrt(2)) < 1e-3


def test_espeak_speech_and_a_streamed_wav_header(tmp_path):
    written = speech_wav(tmp_path / "written.wav", "the quick brown fox")
    streamed = speech_wav(tmp_path / "streamed.wav", "the quick brown fox", streamed=True)
    # The streamed file's header declares 0x7FFFF000 bytes: a placeholder, not a truncation.
    assert streamed.read_bytes()[40:44] == b"\x00\xf0\xff\x7f"
    a, b = load_audio(written, 16_000), load_audio(streamed, 16_000)
    frames = soundfile.info(written).frames
    assert soundfile.info(written).samplerate == 22_050
    assert a.shape == (round(frames * 16_000 / 22_050),)
    np.testing.assert_array_equal(a, b)
    assert np.sqrt(np.mean(a**2)) > 0.01  # it holds speech, not silence


def test_loader_for_follows_the_encoder_preprocessing():
    audio = loader_for("audio", {"sample_rate": 16_000})(sample(SPEECH))
    assert audio.shape == (round(68_545 / 3),)
    image = loader_for(Modality.IMAGE, {})(sample(SKIMAGE_DATA / "camera.png"))
    assert image.mode == "RGB"


# --- the bad-file table ----------------------------------------------------------------------

Maker = Callable[[Path], Path]


def _text(name: str) -> Maker:
    def make(folder: Path) -> Path:
        path = folder / name
        path.write_text("hello world\nthis is not media\n")
        return path

    return make


def _missing(folder: Path) -> Path:
    return folder / "missing.wav"


def _empty(folder: Path) -> Path:
    path = folder / "empty.jpg"
    path.write_bytes(b"")
    return path


def _folder(folder: Path) -> Path:
    path = folder / "photos.jpg"
    path.mkdir()
    return path


def _truncated_wav(folder: Path) -> Path:
    return truncated_copy(sample(SPEECH), folder / "truncated.wav")


def _wav_cut_in_header(folder: Path) -> Path:
    return truncated_copy(sample(SPEECH), folder / "header.wav", keep=30)


def _ogg_cut_in_headers(folder: Path) -> Path:
    return truncated_copy(sample(STEREO_OGA), folder / "headers.oga", keep=2000)


def _ogg_cut_after_headers(folder: Path) -> Path:
    return truncated_copy(sample(STEREO_OGA), folder / "no-pages.oga", keep=6000)


def _truncated_flac(folder: Path) -> Path:
    speech, rate = soundfile.read(sample(SPEECH), dtype="float32")
    whole = folder / "whole.flac"
    soundfile.write(whole, speech, rate)
    return truncated_copy(whole, folder / "truncated.flac")


def _truncated_jpeg(folder: Path) -> Path:
    return truncated_copy(sample(SKIMAGE_DATA / "rocket.jpg"), folder / "truncated.jpg")


def _bomb(folder: Path) -> Path:
    path = folder / "bomb.png"
    path.write_bytes(png_declaring(100_000, 100_000))
    return path


def _tiff_pillow_cannot_decode(folder: Path) -> Path:
    return Path(shutil.copy(sample(SKIMAGE_DATA / "multipage_rgb.tif"), folder / "pages.tif"))


def _npy(folder: Path) -> Path:
    path = folder / "vectors.dat"
    with path.open("wb") as handle:
        np.save(handle, np.arange(10.0))
    return path


def _m4a(folder: Path) -> Path:
    path = folder / "song.m4a"
    path.write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x02\x00M4A mp42isom" + bytes(64))
    return path


def _zero_length_wav(folder: Path) -> Path:
    path = folder / "silence.wav"
    soundfile.write(path, np.zeros(0, dtype=np.float32), 16_000)
    return path


def _non_finite_wav(folder: Path) -> Path:
    samples = sine(440.0, 16_000, 16_000)
    samples[8000] = np.nan
    samples[12000] = np.inf
    path = folder / "nan.wav"
    soundfile.write(path, samples, 16_000, subtype="FLOAT")
    return path


def _png_named_wav(folder: Path) -> Path:
    return Path(shutil.copy(sample(SKIMAGE_DATA / "camera.png"), folder / "camera.wav"))


def _wav_named_png(folder: Path) -> Path:
    return Path(shutil.copy(sample(SPEECH), folder / "speech.png"))


# (case, maker, reader, exact reason). Readers: "image" = load_image, "audio" = load_audio at
# 16 kHz, "detect" = detect_modality, "detect-audio"/"detect-image" = with that expectation.
BAD_FILES: list[tuple[str, Maker, str, str]] = [
    ("missing file", _missing, "audio", "file not found"),
    ("empty file", _empty, "image", "empty file (0 bytes)"),
    ("folder", _folder, "detect", "is a directory, not a file"),
    (
        "text named .jpg",
        _text("photo.jpg"),
        "image",
        "not an image: the content is text ('hello world this is not'), not a format Pillow reads",
    ),
    (
        "text named .jpg, detected",
        _text("photo.jpg"),
        "detect",
        "not an image: the content is text ('hello world this is not'), not a format Pillow reads",
    ),
    (
        "text named .wav",
        _text("clip.wav"),
        "audio",
        "not an audio file: the content is text ('hello world this is not'), "
        "not a format libsndfile reads",
    ),
    (
        "text named .txt",
        _text("notes.txt"),
        "detect",
        f"unsupported format: the content is text ('hello world this is not'); {SUPPORTED}",
    ),
    (
        "truncated wav",
        _truncated_wav,
        "audio",
        "truncated WAV file: the header declares 68,545 frames, the file holds 34,261",
    ),
    (
        "truncated wav, detected",
        _truncated_wav,
        "detect",
        "truncated WAV file: the header declares 68,545 frames, the file holds 34,261",
    ),
    (
        "wav cut inside its header",
        _wav_cut_in_header,
        "audio",
        "corrupt or truncated WAV file: Error in WAV file. No 'data' chunk marker",
    ),
    (
        "ogg cut inside its headers",
        _ogg_cut_in_headers,
        "audio",
        "corrupt or truncated Ogg file: Supported file format but file is malformed",
    ),
    (
        "ogg cut before its first audio page",
        _ogg_cut_after_headers,
        "audio",
        "zero-length audio: the OGG file holds no samples",
    ),
    (
        "truncated flac",
        _truncated_flac,
        "audio",
        "corrupt or truncated FLAC file: flac decoder lost sync",
    ),
    (
        "truncated jpeg",
        _truncated_jpeg,
        "image",
        r"corrupt or truncated JPEG image: image file is truncated \(\d+ bytes not processed\)",
    ),
    (
        "decompression bomb",
        _bomb,
        "detect",
        "image too large: it declares 10,000,000,000 pixels, over the limit of 89,478,485 "
        "(a guard against decompression bombs)",
    ),
    (
        "tiff Pillow cannot decode",
        _tiff_pillow_cannot_decode,
        "image",
        "corrupt or unsupported image: the content is a TIFF image, but Pillow cannot decode it",
    ),
    (
        "unsupported format (npy)",
        _npy,
        "detect",
        f"unsupported format: the content is a NumPy array (.npy); {SUPPORTED}",
    ),
    (
        "unsupported format (m4a)",
        _m4a,
        "detect",
        f"unsupported format: the content is an MP4/M4A container (AAC or video); {SUPPORTED}",
    ),
    (
        "m4a where audio is expected",
        _m4a,
        "detect-audio",
        "not an audio file: the content is an MP4/M4A container (AAC or video), "
        "not a format libsndfile reads",
    ),
    (
        "zero-length audio",
        _zero_length_wav,
        "audio",
        "zero-length audio: the WAV file holds no samples",
    ),
    (
        "non-finite audio",
        _non_finite_wav,
        "audio",
        "non-finite audio: 2 of 16,000 samples are NaN or infinite (the first at 0.500 s)",
    ),
    (
        "png named .wav, audio expected",
        _png_named_wav,
        "detect-audio",
        "not an audio file: it is a PNG image",
    ),
    (
        "wav named .png, image expected",
        _wav_named_png,
        "detect-image",
        "not an image: it is WAV audio",
    ),
    (
        "png named .wav, read as audio",
        _png_named_wav,
        "audio",
        "not an audio file: the content is a PNG image, not a format libsndfile reads",
    ),
]

READERS: dict[str, Callable[[Path], object]] = {
    "image": load_image,
    "audio": lambda path: load_audio(path, 16_000),
    "detect": detect_modality,
    "detect-audio": lambda path: detect_modality(path, expected="audio"),
    "detect-image": lambda path: detect_modality(path, expected=Modality.IMAGE),
}


@pytest.mark.parametrize(
    ("maker", "reader", "reason"),
    [case[1:] for case in BAD_FILES],
    ids=[case[0] for case in BAD_FILES],
)
def test_each_bad_file_gets_one_precise_error(tmp_path, capfd, maker, reader, reason):
    path = maker(tmp_path)
    assert_one_error(lambda: READERS[reader](path), path, reason, pattern="\\(" in reason)
    assert capfd.readouterr() == ("", "")  # the library never prints


def test_content_decides_the_modality_not_the_name(tmp_path):
    assert detect_modality(_png_named_wav(tmp_path)) is Modality.IMAGE
    assert detect_modality(_wav_named_png(tmp_path)) is Modality.AUDIO
    assert detect_modality(sample(STEREO_OGA), expected="audio") is Modality.AUDIO


def test_unreadable_file_is_reported(tmp_path, monkeypatch):
    path = Path(shutil.copy(sample(SPEECH), tmp_path / "locked.wav"))
    path.chmod(0)
    # Root reads any file whatever its mode, so the permission check is answered as for a user.
    monkeypatch.setattr("ucl_cli.media.files.os.access", lambda *args, **kwargs: False)
    with pytest.raises(InputFileError, match="cannot be read: permission denied"):
        load_audio(path, 16_000)


# --- folders ---------------------------------------------------------------------------------


@pytest.fixture
def mixed_folder(tmp_path) -> Path:
    """Good and bad media, hidden entries, a non-media file, a nested folder and a link loop."""
    root = tmp_path / "media"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    shutil.copy(sample(SPEECH), root / "a.wav")
    _text("b.jpg")(root)
    _truncated_wav(root).rename(root / "e.wav")
    speech, rate = soundfile.read(SPEECH, dtype="float32")
    soundfile.write(root / "f.flac", speech, rate)
    _text("notes.txt")(root)
    _text(".hidden.wav")(root)
    _text("x.wav")(root / ".git")
    shutil.copy(sample(SKIMAGE_DATA / "astronaut.png"), root / "sub" / "c.png")
    shutil.copy(sample(FREEDESKTOP_SOUNDS / "bell.oga"), root / "sub" / "d.oga")
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    return root


def test_folder_with_bad_files_is_processed_with_a_warning_each(mixed_folder, capfd):
    warned: list[InputFileError] = []
    collection = collect_media([mixed_folder], on_skip=warned.append)
    root = mixed_folder
    assert [(item.path, item.modality) for item in collection.files] == [
        (root / "a.wav", Modality.AUDIO),
        (root / "f.flac", Modality.AUDIO),
        (root / "sub" / "c.png", Modality.IMAGE),
        (root / "sub" / "d.oga", Modality.AUDIO),
    ]
    assert [(error.path, error.reason) for error in warned] == [
        (
            str(root / "b.jpg"),
            "not an image: the content is text ('hello world this is not'), "
            "not a format Pillow reads",
        ),
        (
            str(root / "e.wav"),
            "truncated WAV file: the header declares 68,545 frames, the file holds 34,261",
        ),
    ]
    assert collection.skipped == warned
    assert collection.ignored == [root / "notes.txt"]
    assert collection.skip_summary() == "skipped 2 of 6 files that could not be read"
    assert collection.modalities == {Modality.AUDIO, Modality.IMAGE}
    assert capfd.readouterr() == ("", "")


def test_strict_fails_at_the_first_bad_file(mixed_folder):
    with pytest.raises(InputFileError) as caught:
        collect_media([mixed_folder], strict=True)
    assert caught.value.path == str(mixed_folder / "b.jpg")


def test_one_modality_ignores_files_named_as_the_other(mixed_folder):
    collection = collect_media([mixed_folder], "audio")
    assert collection.paths == [
        mixed_folder / "a.wav",
        mixed_folder / "f.flac",
        mixed_folder / "sub" / "d.oga",
    ]
    assert [error.path for error in collection.skipped] == [str(mixed_folder / "e.wav")]
    assert sorted(collection.ignored) == [
        mixed_folder / "b.jpg",
        mixed_folder / "notes.txt",
        mixed_folder / "sub" / "c.png",
    ]
    assert collect_media([mixed_folder], "image").paths == [mixed_folder / "sub" / "c.png"]


def test_arguments_keep_their_order_and_files_are_listed_once(mixed_folder):
    first = mixed_folder / "sub" / "d.oga"
    collection = collect_media([first, mixed_folder, first])
    assert collection.paths[0] == first
    assert collection.paths.count(first) == 1
    assert len(collection.paths) == 4
    assert collect_media([mixed_folder]).paths == collect_media([mixed_folder]).paths


def test_explicit_files_are_checked_by_content_whatever_their_name(tmp_path):
    hidden = Path(shutil.copy(sample(SPEECH), tmp_path / ".speech.bin"))
    collection = collect_media([hidden, tmp_path / "missing.png"])
    assert collection.paths == [hidden]
    assert [(error.path, error.reason) for error in collection.skipped] == [
        (str(tmp_path / "missing.png"), "file not found")
    ]
    with pytest.raises(InputFileError, match="file not found"):
        collect_media([tmp_path / "missing.png"], strict=True)
