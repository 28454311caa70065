"""Write a few real sample inputs for the demo: photos from scikit-image, synthesized sounds.

    python scripts/make_demo_media.py DIR    # DIR/images/*.png, DIR/audio/*.wav
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import soundfile as sf
from PIL import Image

SAMPLE_RATE = 48_000


def write_images(folder: Path) -> None:
    from skimage import data

    folder.mkdir(parents=True, exist_ok=True)
    for name in ("astronaut", "chelsea", "coffee", "rocket"):
        Image.fromarray(getattr(data, name)()).save(folder / f"{name}.png")


def write_sounds(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(3 * SAMPLE_RATE) / SAMPLE_RATE
    rng = np.random.default_rng(0)
    sounds = {
        "tone_440.wav": 0.3 * np.sin(2 * np.pi * 440 * t),
        "chirp.wav": 0.3 * np.sin(2 * np.pi * (200 + 600 * t) * t),
        "noise.wav": 0.1 * rng.standard_normal(t.size),
        "beeps.wav": 0.3 * np.sin(2 * np.pi * 1000 * t) * (np.sin(2 * np.pi * 2 * t) > 0),
    }
    for name, samples in sounds.items():
        sf.write(folder / name, samples.astype(np.float32), SAMPLE_RATE)


def main() -> None:
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    root = Path(sys.argv[1])
    write_images(root / "images")
    write_sounds(root / "audio")
    print(f"wrote demo inputs under {root}", file=sys.stderr)


if __name__ == "__main__":
    main()
