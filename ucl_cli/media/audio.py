"""Reading audio: wav, flac, ogg/oga (vorbis, opus), mp3 and the rest of what libsndfile reads,
as float32 mono at the model's sample rate.

- Channels are averaged (not summed), so a mono file and the same signal duplicated in stereo
  give identical samples.
- Resampling uses soxr's band-limited "HQ" converter: no aliasing, amplitude kept, output length
  round(n * to_rate / from_rate). It is deterministic; no crop or dither happens here.
- libsndfile quietly shortens a WAV whose data chunk was cut off; the header is checked so that
  a truncated download is an error rather than a shorter clip, and other formats that declare
  their length (FLAC, AIFF, ...) must decode to it. Ogg has no length in its header and MP3 only
  an estimate, so a cut-off Ogg or MP3 decodes as the shorter clip it holds (as players do).
- Non-finite samples (possible in float WAV/AIFF) are refused: they would turn every embedding
  computed from the clip into NaN.
"""

from __future__ import annotations

import os
import re
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import soxr

from ucl_cli.errors import InputFileError
from ucl_cli.media.files import describe_content, read_head, require_file, signature_of

RESAMPLE_QUALITY = "HQ"
# Data-chunk sizes written by programs that stream a WAV before knowing its length
# (ffmpeg writes 0xFFFFFFFF, espeak-ng 0x7FFFF000, some tools 0): not a truncation.
_STREAMING_PLACEHOLDER_MIN = 0x7FFFF000
# A WAV file's data chunk is within its first few chunks; stop looking after this many.
_MAX_WAV_CHUNKS = 256


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header declares (frames is an estimate for MP3)."""

    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int

    @property
    def seconds(self) -> float:
        return self.frames / self.sample_rate


def probe_audio(path: str | os.PathLike[str]) -> AudioInfo:
    """Header facts of an audio file, or InputFileError ("not an audio file: ...", ...)."""
    path = require_file(path)
    info = sniff_audio(path)
    if info is None:
        raise InputFileError(path, not_audio_reason(path))
    return info


def sniff_audio(path: Path) -> AudioInfo | None:
    """AudioInfo if libsndfile recognises the file, None if it does not; InputFileError if the
    file is audio but unusable (corrupt, truncated, no samples)."""
    try:
        raw = soundfile.info(str(path))
    except soundfile.LibsndfileError as err:
        found = signature_of(read_head(path))
        if found is not None and found[1] == "audio":
            reason = f"corrupt or truncated {found[0]} file: {_libsndfile_reason(err)}"
            raise InputFileError(path, reason) from None
        return None
    info = AudioInfo(
        raw.format, raw.subtype, int(raw.samplerate), int(raw.channels), int(raw.frames)
    )
    if info.sample_rate <= 0 or info.channels <= 0:
        reason = f"invalid {info.format} header: {info.sample_rate} Hz, {info.channels} channels"
        raise InputFileError(path, reason)
    truncation = _wav_truncation(path)
    if truncation is not None:
        raise InputFileError(path, truncation)
    if info.frames == 0:
        raise InputFileError(path, f"zero-length audio: the {info.format} file holds no samples")
    return info


def load_audio(path: str | os.PathLike[str], sample_rate: int) -> np.ndarray:
    """The clip at `path` as float32 mono samples [n] at `sample_rate` Hz, detached from the file.

    Raises InputFileError naming the path for a missing, empty, unrecognised, truncated or
    corrupt file, a clip without samples, or samples that are NaN or infinite.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    path = require_file(path)
    info = sniff_audio(path)
    if info is None:
        raise InputFileError(path, not_audio_reason(path))
    try:
        with soundfile.SoundFile(str(path)) as handle:
            frames = handle.read(dtype="float32", always_2d=True)
    except soundfile.LibsndfileError as err:
        reason = f"corrupt or truncated {info.format} file: {_libsndfile_reason(err)}"
        raise InputFileError(path, reason) from None
    _check_samples(path, info, frames)
    mono = frames[:, 0] if info.channels == 1 else frames.mean(axis=1, dtype=np.float64)
    samples = resample(mono, info.sample_rate, sample_rate)
    if samples.size == 0:
        reason = (
            f"too short: {len(mono)} samples at {info.sample_rate} Hz give no sample at "
            f"{sample_rate} Hz"
        )
        raise InputFileError(path, reason)
    return samples


def resample(samples: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    """1-D float32 samples converted from `from_rate` to `to_rate` Hz (a copy when equal)."""
    samples = np.asarray(samples, dtype=np.float32)
    if from_rate == to_rate:
        return samples.copy()
    converted = soxr.resample(samples, from_rate, to_rate, quality=RESAMPLE_QUALITY)
    return np.ascontiguousarray(converted, dtype=np.float32)


def not_audio_reason(path: Path) -> str:
    """Why libsndfile refused a file, phrased from what its bytes look like."""
    content = describe_content(read_head(path))
    return f"not an audio file: the content is {content}, not a format libsndfile reads"


def _check_samples(path: Path, info: AudioInfo, frames: np.ndarray) -> None:
    if len(frames) == 0:
        raise InputFileError(path, f"zero-length audio: the {info.format} file holds no samples")
    if info.format != "MP3" and len(frames) < info.frames:
        reason = (
            f"truncated {info.format} file: the header declares {info.frames:,} frames, only "
            f"{len(frames):,} could be decoded"
        )
        raise InputFileError(path, reason)
    finite = np.isfinite(frames)
    if not finite.all():
        bad_rows = np.flatnonzero(~finite.all(axis=1))
        reason = (
            f"non-finite audio: {int((~finite).sum()):,} of {frames.size:,} samples are NaN or "
            f"infinite (the first at {bad_rows[0] / info.sample_rate:.3f} s)"
        )
        raise InputFileError(path, reason)


def _wav_truncation(path: Path) -> str | None:
    """Why a RIFF/WAVE file is truncated (its data chunk declares more than the file holds), or
    None. libsndfile shortens such files silently, so the header is read here."""
    size = path.stat().st_size
    with path.open("rb") as handle:
        head = handle.read(12)
        if head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        position, block_align = 12, 0
        for _ in range(_MAX_WAV_CHUNKS):
            handle.seek(position)
            header = handle.read(8)
            if len(header) < 8:
                return None
            chunk_id, chunk_size = struct.unpack("<4sI", header)
            body = position + 8
            if chunk_id == b"fmt ":
                fmt = handle.read(16)
                if len(fmt) >= 14:
                    block_align = struct.unpack_from("<H", fmt, 12)[0]
            elif chunk_id == b"data":
                held = size - body
                if chunk_size <= held or not 0 < chunk_size < _STREAMING_PLACEHOLDER_MIN:
                    return None
                unit, per_unit = ("frames", block_align) if block_align else ("bytes", 1)
                return (
                    f"truncated WAV file: the header declares {chunk_size // per_unit:,} {unit}, "
                    f"the file holds {held // per_unit:,}"
                )
            position = body + chunk_size + (chunk_size & 1)
    return None


def _libsndfile_reason(err: soundfile.LibsndfileError) -> str:
    """libsndfile's own words, without its "Error :" prefix and final period."""
    text = str(getattr(err, "error_string", err)).strip().rstrip(".")
    return re.sub(r"^Error\s*:\s*", "", text)
