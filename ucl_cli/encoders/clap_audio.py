"""laion_clap's audio input pipeline, made deterministic. Pure numpy/torch: no model, no I/O.

laion_clap prepares a clip as follows (`training/data.py:get_audio_features`), and so do we:
- quantise to int16 and back (the model was trained on such audio);
- longer than `clip_samples` (10 s at 48 kHz): laion_clap crops a RANDOM window; we take the
  centred one, so the same file always gives the same embedding. The fusion variant also builds a
  4-channel log-mel input (the whole clip shrunk to 10 s, plus three 10 s chunks that laion_clap
  draws at random from the front, middle and back thirds; we take the centre of each third);
- shorter: "repeatpad", the clip repeated as many whole times as fits, then zero-padded.

The log-mel spectrogram of the fusion input is laion_clap's (torchaudio MelSpectrogram with an HTK
mel scale, no filter normalisation, power 2, then 10*log10), computed here with torch.stft, because
laion_clap needs torchaudio for it and does not declare it as a dependency.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from ucl_cli.errors import UsageError


@dataclass(frozen=True)
class AudioSettings:
    """The parts of a CLAP model's `audio_cfg` that the input pipeline needs."""

    sample_rate: int = 48_000
    clip_samples: int = 480_000
    window_size: int = 1024
    hop_size: int = 480
    mel_bins: int = 64
    fmin: float = 50.0
    fmax: float = 14_000.0
    fusion: bool = False

    @classmethod
    def from_audio_cfg(cls, audio_cfg: dict, fusion: bool) -> AudioSettings:
        return cls(
            sample_rate=int(audio_cfg["sample_rate"]),
            clip_samples=int(audio_cfg["clip_samples"]),
            window_size=int(audio_cfg["window_size"]),
            hop_size=int(audio_cfg["hop_size"]),
            mel_bins=int(audio_cfg["mel_bins"]),
            fmin=float(audio_cfg["fmin"]),
            fmax=float(audio_cfg["fmax"]),
            fusion=fusion,
        )


def quantize_int16(audio: np.ndarray) -> np.ndarray:
    """laion_clap's int16 round trip: clip to [-1, 1], scale by 32767, truncate, scale back."""
    as_int = (np.clip(audio, -1.0, 1.0) * 32767.0).astype(np.int16)
    return (as_int / 32767.0).astype(np.float32)


def center_crop(audio: np.ndarray, length: int) -> np.ndarray:
    start = (len(audio) - length) // 2
    return audio[start : start + length]


def repeat_pad(audio: np.ndarray, length: int) -> np.ndarray:
    """Whole repeats of the clip, then zeros up to `length` (laion_clap's "repeatpad")."""
    repeats = length // len(audio)
    tiled = np.tile(audio, repeats)
    return np.pad(tiled, (0, length - len(tiled)))


def _hz_to_mel(hz: torch.Tensor) -> torch.Tensor:
    return 2595.0 * torch.log10(1.0 + hz / 700.0)


def _mel_to_hz(mel: torch.Tensor) -> torch.Tensor:
    return 700.0 * (10.0 ** (mel / 2595.0) - 1.0)


def mel_filterbank(settings: AudioSettings) -> torch.Tensor:
    """HTK-scale triangular filters without normalisation: [window_size // 2 + 1, mel_bins]."""
    freqs = torch.linspace(
        0, settings.sample_rate // 2, settings.window_size // 2 + 1, dtype=torch.float64
    )
    low, high = (
        _hz_to_mel(torch.tensor(settings.fmin, dtype=torch.float64)),
        _hz_to_mel(torch.tensor(settings.fmax, dtype=torch.float64)),
    )
    edges = _mel_to_hz(
        torch.linspace(float(low), float(high), settings.mel_bins + 2, dtype=torch.float64)
    )
    widths = edges[1:] - edges[:-1]
    slopes = edges.unsqueeze(0) - freqs.unsqueeze(1)
    down = -slopes[:, :-2] / widths[:-1]
    up = slopes[:, 2:] / widths[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).float()


def log_mel(audio: torch.Tensor, settings: AudioSettings) -> torch.Tensor:
    """Log-mel power spectrogram in dB, [frames, mel_bins], frames = 1 + len // hop."""
    window = torch.hann_window(settings.window_size, dtype=audio.dtype, device=audio.device)
    spectrum = torch.stft(
        audio,
        n_fft=settings.window_size,
        hop_length=settings.hop_size,
        win_length=settings.window_size,
        window=window,
        center=True,
        pad_mode="reflect",
        return_complex=True,
    )
    power = spectrum.abs() ** 2  # [freq, frames]
    mel = mel_filterbank(settings).to(device=audio.device, dtype=power.dtype).T @ power
    return (10.0 * torch.log10(torch.clamp(mel, min=1e-10))).T


def _fusion_input(mel: torch.Tensor, settings: AudioSettings) -> tuple[torch.Tensor, bool]:
    """The 4-channel fusion input of one clip's mel [frames, mel_bins]; whether it is 'longer'."""
    chunk = settings.clip_samples // settings.hop_size + 1
    total = mel.shape[0]
    if total <= chunk:
        return torch.stack([mel] * 4), False
    starts = np.array_split(np.arange(total - chunk + 1), 3)
    picks = [int(part[len(part) // 2]) if len(part) else 0 for part in starts]
    chunks = [mel[p : p + chunk] for p in picks]
    # laion_clap shrinks with torchvision's Resize on a tensor, which (in the torchvision of its
    # training time) meant bilinear interpolation without antialiasing.
    shrunk = F.interpolate(
        mel[None, None],
        size=(chunk, settings.mel_bins),
        mode="bilinear",
        align_corners=False,
        antialias=False,
    )[0, 0]
    return torch.stack([shrunk, *chunks]), True


def prepare(audio: np.ndarray, settings: AudioSettings) -> dict[str, torch.Tensor]:
    """The model input of one clip: {"waveform", "longer"} (+ "mel_fusion" for fusion models)."""
    samples = np.asarray(audio, dtype=np.float32)
    if samples.ndim != 1:
        raise UsageError(f"audio must be 1-D mono samples, got shape {tuple(samples.shape)}")
    if samples.size == 0:
        raise UsageError("audio clip is empty (0 samples)")
    if not np.isfinite(samples).all():
        raise UsageError("audio clip contains NaN or infinite samples")
    samples = quantize_int16(samples)
    length = settings.clip_samples
    item: dict[str, torch.Tensor] = {}
    longer = False
    if len(samples) > length:
        if settings.fusion:
            item["mel_fusion"], longer = _fusion_input(
                log_mel(torch.from_numpy(samples), settings), settings
            )
        samples = center_crop(samples, length)
    else:
        samples = repeat_pad(samples, length)
        if settings.fusion:
            item["mel_fusion"], longer = _fusion_input(
                log_mel(torch.from_numpy(samples), settings), settings
            )
    item["waveform"] = torch.from_numpy(np.ascontiguousarray(samples))
    item["longer"] = torch.tensor([longer])
    return item


def collate(items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Stack per-clip inputs into a batch, as laion_clap's get_audio_embedding does."""
    return {key: torch.stack([item[key] for item in items]) for key in items[0]}
