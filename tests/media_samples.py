"""Real sample media available offline, and small builders for damaged files.

Images come from scikit-image and matplotlib; sounds from the Debian packages alsa-utils
(48 kHz speech WAVs) and sound-theme-freedesktop (Ogg Vorbis effects); espeak-ng makes speech.
scripts/test.sh installs the packages. A missing sample fails the test: it never skips.
"""

from __future__ import annotations

import re
import shutil
import struct
import subprocess
import zlib
from collections.abc import Callable
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import skimage.data
from PIL import Image

from ucl_cli.errors import InputFileError

SKIMAGE_DATA = Path(skimage.data.__file__).parent
MATPLOTLIB_DATA = Path(matplotlib.get_data_path()) / "sample_data"
ALSA_SOUNDS = Path("/usr/share/sounds/alsa")
FREEDESKTOP_SOUNDS = Path("/usr/share/sounds/freedesktop/stereo")
SPEECH = ALSA_SOUNDS / "Front_Center.wav"  # 48 kHz mono PCM_16, 68,545 frames
STEREO_OGA = FREEDESKTOP_SOUNDS / "camera-shutter.oga"  # 96 kHz stereo Vorbis, 83,734 frames

_INSTALL_HINT = (
    "apt-get install -y alsa-utils sound-theme-freedesktop espeak-ng sox (scripts/test.sh does)"
)


def sample(path: Path) -> Path:
    """A real sample file that must exist."""
    if not path.is_file():
        pytest.fail(f"sample file {path} is missing; {_INSTALL_HINT}")
    return path


def assert_one_error(
    read: Callable[[], object], path: Path, reason: str, *, pattern: bool = False
) -> None:
    """`read()` raises one InputFileError that names `path` and says exactly `reason` (a regular
    expression to match whole when `pattern`), and its message is "PATH: REASON"."""
    with pytest.raises(InputFileError) as caught:
        read()
    error = caught.value
    assert error.path == str(path)
    if pattern:
        assert re.fullmatch(reason, error.reason), error.reason
    else:
        assert error.reason == reason
    assert str(error) == f"{path}: {error.reason}"


def open_image(path: Path) -> Image.Image:
    """A reference image as Pillow reads it, loaded and with its file closed."""
    with Image.open(path) as image:
        image.load()
        return image.copy()


def tool(name: str) -> str:
    """A command-line tool the tests need (espeak-ng, sox)."""
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed; {_INSTALL_HINT}")
    return found


def speech_wav(path: Path, text: str, *, streamed: bool = False) -> Path:
    """Speech from espeak-ng (22,050 Hz mono). `streamed` pipes it, as a live recorder would,
    so the WAV header carries a placeholder length instead of the real one."""
    espeak = tool("espeak-ng")
    if streamed:
        audio = subprocess.run([espeak, "--stdout", text], check=True, capture_output=True).stdout
        path.write_bytes(audio)
    else:
        subprocess.run([espeak, "-w", str(path), text], check=True, capture_output=True)
    return path


def sine(frequency: float, rate: int, frames: int, amplitude: float = 0.5) -> np.ndarray:
    """A float32 sine wave, computed in float64."""
    return (amplitude * np.sin(2 * np.pi * frequency * np.arange(frames) / rate)).astype(np.float32)


def png_declaring(width: int, height: int) -> bytes:
    """A tiny PNG (valid signature and checksums, no pixel data) that declares width x height:
    the shape of a decompression bomb."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


def truncated_copy(source: Path, target: Path, keep: int | None = None) -> Path:
    """`target` holding the first `keep` bytes of `source` (default: half)."""
    raw = source.read_bytes()
    target.write_bytes(raw[: len(raw) // 2 if keep is None else keep])
    return target
