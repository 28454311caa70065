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
- A header's claims are checked before anything is decoded: frames x channels against a limit,
  and against the file's size (no codec packs more than so many samples into a byte), so that a
  FLAC of a few hundred bytes claiming 2^36 frames x 8 channels is one error, not a 2 TB
  allocation. Decoding then goes block by block, mixing each to mono, so memory follows the
  samples actually there, not the claim (a FLAC streamed to a pipe claims no length at all).
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

# The most samples (frames x channels) one file may hold: 2^30, 4.3 GB as float32, which is
# 6.2 hours of 48 kHz mono or 3.1 hours of stereo. Models see far less (laion_clap takes a 10 s
# window, its fusion variant a summary of the whole clip), but a long recording is legitimately
# read whole. Past this a file is refused from its header: such a claim is more often corrupt or
# hostile than a real candidate, and decoding it would take many gigabytes and minutes per file.
MAX_AUDIO_SAMPLES = 1 << 30
# The most samples a header may claim per byte of file. Silence compresses hardest: libsndfile's
# encoders reach about 2,200 samples a byte (8-channel Vorbis), and FLAC's most compact frame
# (8 channels of 65,535 equal samples in about 22 bytes) under 24,000; a claim over this cannot
# be decoded from the bytes there are.
_MAX_SAMPLES_PER_BYTE = 1 << 16
# What libsndfile reports as the length of a file whose header does not give one (SF_COUNT_MAX):
# a FLAC written to a pipe, whose encoder could not go back to fill in STREAMINFO.
_UNKNOWN_FRAMES = 2**63 - 1
# Samples decoded per read (frames = this // channels): the buffer stays small for any channel
# count libsndfile allows (up to 1,024).
_BLOCK_SAMPLES = 1 << 20


@dataclass(frozen=True)
class AudioInfo:
    """What an audio file's header declares (frames is an estimate for MP3, None when the header
    leaves the length open)."""

    format: str
    subtype: str
    sample_rate: int
    channels: int
    frames: int | None

    @property
    def seconds(self) -> float | None:
        return None if self.frames is None else self.frames / self.sample_rate


def probe_audio(path: str | os.PathLike[str]) -> AudioInfo:
    """Header facts of an audio file, or InputFileError ("not an audio file: ...", ...)."""
    path = require_file(path)
    info = sniff_audio(path)
    if info is None:
        raise InputFileError(path, not_audio_reason(path))
    return info


def sniff_audio(path: Path) -> AudioInfo | None:
    """AudioInfo if libsndfile recognises the file, None if it does not; InputFileError if the
    file is audio but unusable (corrupt, truncated, no samples, a header claiming too much)."""
    try:
        raw = soundfile.info(str(path))
    except RuntimeError as err:  # LibsndfileError, or the soundfile binding's own failure
        found = signature_of(read_head(path))
        if found is not None and found[1] == "audio":
            reason = f"corrupt or truncated {found[0]} file: {_libsndfile_reason(err)}"
            raise InputFileError(path, reason) from None
        return None
    frames = int(raw.frames)
    info = AudioInfo(
        raw.format,
        raw.subtype,
        int(raw.samplerate),
        int(raw.channels),
        None if frames == _UNKNOWN_FRAMES else frames,
    )
    if info.sample_rate <= 0 or info.channels <= 0:
        reason = f"invalid {info.format} header: {info.sample_rate} Hz, {info.channels} channels"
        raise InputFileError(path, reason)
    truncation = _wav_truncation(path)
    if truncation is not None:
        raise InputFileError(path, truncation)
    if info.frames == 0:
        raise InputFileError(path, f"zero-length audio: the {info.format} file holds no samples")
    claim = _implausible_claim(info, path.stat().st_size)
    if claim is not None:
        raise InputFileError(path, claim)
    return info


def load_audio(path: str | os.PathLike[str], sample_rate: int) -> np.ndarray:
    """The clip at `path` as float32 mono samples [n] at `sample_rate` Hz, detached from the file.

    Raises InputFileError naming the path for a missing, empty, unrecognised, truncated or
    corrupt file, a clip without samples, samples that are NaN or infinite, a header claiming
    more than MAX_AUDIO_SAMPLES or more than the file can hold, or running out of memory.
    """
    if sample_rate <= 0:
        raise ValueError(f"sample_rate must be positive, got {sample_rate}")
    path = require_file(path)
    info = sniff_audio(path)
    if info is None:
        raise InputFileError(path, not_audio_reason(path))
    try:
        mono = _decode_mono(path, info)
    except MemoryError:
        reason = f"out of memory decoding {_claimed(info)} of {info.format} audio"
        raise InputFileError(path, reason) from None
    except RuntimeError as err:  # LibsndfileError and the soundfile binding's own failures
        reason = f"corrupt or truncated {info.format} file: {_libsndfile_reason(err)}"
        raise InputFileError(path, reason) from None
    except ValueError as err:  # numpy refusing a shape or size the decoder reported
        raise InputFileError(path, f"corrupt {info.format} file: {err}") from None
    try:
        samples = resample(mono, info.sample_rate, sample_rate)
    except MemoryError:
        reason = (
            f"out of memory resampling {len(mono):,} samples from {info.sample_rate:,} Hz to "
            f"{sample_rate:,} Hz"
        )
        raise InputFileError(path, reason) from None
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


class _SequentialFile(soundfile.SoundFile):
    """A SoundFile read front to back. soundfile seeks after every read to keep its position,
    and libsndfile cannot seek in a FLAC whose header leaves the length open; reading straight
    through needs no seek, and never sizes a buffer from the header's frame count."""

    def seekable(self) -> bool:
        return False


def _decode_mono(path: Path, info: AudioInfo) -> np.ndarray:
    """Every sample of the file, mixed to float32 mono block by block: memory follows what the
    file holds, not what its header claims. InputFileError for too many, none, fewer than the
    header declares, or non-finite samples."""
    channels = info.channels
    buffer = np.empty((max(1, _BLOCK_SAMPLES // channels), channels), dtype=np.float32)
    parts: list[np.ndarray] = []
    decoded = non_finite = 0
    first_non_finite: int | None = None
    with _SequentialFile(str(path)) as handle:
        while True:
            block = handle.read(dtype="float32", always_2d=True, out=buffer)
            if len(block) == 0:
                break
            if (decoded + len(block)) * channels > MAX_AUDIO_SAMPLES:
                raise InputFileError(path, _decodes_too_much(info))
            finite = np.isfinite(block)
            if not finite.all():
                if first_non_finite is None:
                    first_non_finite = decoded + int(np.flatnonzero(~finite.all(axis=1))[0])
                non_finite += int((~finite).sum())
            if channels == 1:
                parts.append(block[:, 0].copy())
            else:
                parts.append(block.mean(axis=1, dtype=np.float64).astype(np.float32))
            decoded += len(block)
    if decoded == 0:
        raise InputFileError(path, f"zero-length audio: the {info.format} file holds no samples")
    if info.format != "MP3" and info.frames is not None and decoded < info.frames:
        reason = (
            f"truncated {info.format} file: the header declares {info.frames:,} frames, only "
            f"{decoded:,} could be decoded"
        )
        raise InputFileError(path, reason)
    if first_non_finite is not None:
        reason = (
            f"non-finite audio: {non_finite:,} of {decoded * channels:,} samples are NaN or "
            f"infinite (the first at {first_non_finite / info.sample_rate:.3f} s)"
        )
        raise InputFileError(path, reason)
    return np.concatenate(parts)


def _implausible_claim(info: AudioInfo, file_size: int) -> str | None:
    """Why the header's frames x channels cannot be believed (over the limit, or more than the
    file's bytes can encode), or None. Checked before a sample is decoded."""
    if info.frames is None:
        return None  # nothing claimed: decoding stops at the limit instead
    samples = info.frames * info.channels
    if samples > MAX_AUDIO_SAMPLES:
        return (
            f"audio too large: the {info.format} header claims {_claimed(info)} "
            f"({_duration(info.frames / info.sample_rate)} at {info.sample_rate:,} Hz; "
            f"{_bytes(4 * samples)} as float32 samples), over the limit of "
            f"{MAX_AUDIO_SAMPLES:,} samples ({_bytes(4 * MAX_AUDIO_SAMPLES)}) per file"
        )
    if samples > _MAX_SAMPLES_PER_BYTE * file_size:
        return (
            f"implausible {info.format} header: it claims {_claimed(info)} from a file of "
            f"{file_size:,} bytes; no codec packs more than {_MAX_SAMPLES_PER_BYTE:,} samples "
            "into a byte"
        )
    return None


def _decodes_too_much(info: AudioInfo) -> str:
    limit = f"{MAX_AUDIO_SAMPLES:,} samples ({_bytes(4 * MAX_AUDIO_SAMPLES)} as float32)"
    if info.frames is None:
        return (
            f"audio too large: the {info.format} file, whose header leaves its length open, "
            f"decodes to more than {limit}, the limit per file"
        )
    return (
        f"audio too large: the {info.format} file decodes to more than the {_claimed(info)} "
        f"its header claims, and more than {limit}, the limit per file"
    )


def _claimed(info: AudioInfo) -> str:
    """The header's claim in words: "68,719,476,735 frames x 8 channels"."""
    channels = f"{info.channels} channel{'' if info.channels == 1 else 's'}"
    if info.frames is None:
        return f"an unknown number of frames x {channels}"
    return f"{info.frames:,} frames x {channels}"


def _bytes(count: float) -> str:
    """A size in decimal units: "2.2 TB", "274.2 kB"."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if count >= scale:
            return f"{count / scale:.1f} {unit}"
    return f"{count:.0f} bytes"


def _duration(seconds: float) -> str:
    """A duration in the largest unit that keeps it readable: "99.4 days", "1.4 s"."""
    for unit, scale in (("days", 86_400), ("hours", 3_600), ("minutes", 60)):
        if seconds >= 2 * scale:
            return f"{seconds / scale:.1f} {unit}"
    return f"{seconds:.1f} s"


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


def _libsndfile_reason(err: Exception) -> str:
    """libsndfile's own words, without its "Error :" prefix and final period."""
    text = str(getattr(err, "error_string", err)).strip().rstrip(".")
    return re.sub(r"^Error\s*:\s*", "", text)
