"""Reading images: every format Pillow reads, upright (EXIF orientation applied), as 8-bit RGB.

Guards and conversions that `Image.open(path).convert("RGB")` alone gets wrong:
- A decompression bomb (a small file declaring billions of pixels) is refused from its header,
  before any pixel memory is allocated, with the declared size in the message.
- 16-bit and 32-bit grey images are scaled to 8 bits; a plain convert clips every value above
  255 and turns a 16-bit photo white.
- Transparent pixels are composited over white, as image viewers show them, instead of exposing
  whatever colour the encoder left under alpha 0 (often black).
- Multi-frame files (GIF, TIFF, ...) give their first frame; later frames are never decoded, so
  their sizes do not matter.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from ucl_cli.errors import InputFileError
from ucl_cli.media.files import describe_content, read_head, require_file, signature_of

# Pillow's own default limit (about 89.5 megapixels, a 0.25 GB RGB image) when it is not set.
DEFAULT_MAX_PIXELS = 89_478_485

_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})
_ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "La", "RGBa"})
# Errors Pillow raises while decoding damaged data (truncated streams, bad chunks).
_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError)


@dataclass(frozen=True)
class ImageInfo:
    """What an image's header declares; reading it allocates no pixel memory."""

    format: str
    width: int
    height: int


def max_pixels_limit() -> int:
    """The decompression-bomb limit: Pillow's `Image.MAX_IMAGE_PIXELS` when the caller set one."""
    return int(Image.MAX_IMAGE_PIXELS or DEFAULT_MAX_PIXELS)


def probe_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> ImageInfo:
    """Header facts of an image, or InputFileError ("not an image: ...", "image too large: ...")."""
    path = require_file(path)
    info = sniff_image(path, max_pixels=max_pixels)
    if info is None:
        raise InputFileError(path, not_an_image_reason(path))
    return info


def sniff_image(path: Path, *, max_pixels: int | None = None) -> ImageInfo | None:
    """ImageInfo if Pillow recognises the file, None if it does not; InputFileError if too large."""
    with _opened(path, max_pixels) as image:
        if image is None:
            return None
        return ImageInfo(str(image.format), image.width, image.height)


def load_image(path: str | os.PathLike[str], *, max_pixels: int | None = None) -> Image.Image:
    """The image at `path`, upright and in 8-bit RGB, detached from the file.

    Raises InputFileError naming the path for a missing, empty, unrecognised, oversized,
    truncated or corrupt file, or one that there is not memory enough to decode.
    """
    path = require_file(path)
    with _opened(path, max_pixels) as image:
        if image is None:
            raise InputFileError(path, not_an_image_reason(path))
        out_of_memory = (
            f"out of memory decoding a {image.width} x {image.height} {image.mode} "
            f"{image.format} image"
        )
        try:
            image.load()  # decode now, so that damage surfaces here with the file's name
            upright = ImageOps.exif_transpose(image)
        except MemoryError:
            raise InputFileError(path, out_of_memory) from None
        except _DECODE_ERRORS as err:
            reason = f"corrupt or truncated {image.format} image: {err}"
            raise InputFileError(path, reason) from None
        try:
            return _to_rgb(upright)
        except MemoryError:
            raise InputFileError(path, out_of_memory) from None
        except ValueError as err:
            reason = f"unsupported {image.format} image mode {upright.mode}: {err}"
            raise InputFileError(path, reason) from None


def not_an_image_reason(path: Path) -> str:
    """Why Pillow refused a file, phrased from what its bytes look like."""
    head = read_head(path)
    content = describe_content(head)
    found = signature_of(head)
    if found is not None and found[1] == "image":
        return (
            f"corrupt or unsupported image: the content is {content}, but Pillow cannot decode it"
        )
    return f"not an image: the content is {content}, not a format Pillow reads"


@contextmanager
def _opened(path: Path, max_pixels: int | None) -> Iterator[Image.Image | None]:
    """`Image.open` with the bomb guard applied to the declared size; None if unrecognised.

    Pillow warns between its limit and twice its limit and raises above; both become one
    InputFileError here, against the caller's `max_pixels` (default: Pillow's limit; to go above
    twice Pillow's limit, raise `PIL.Image.MAX_IMAGE_PIXELS`).
    """
    limit = max_pixels if max_pixels is not None else max_pixels_limit()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except UnidentifiedImageError:
        yield None
        return
    except Image.DecompressionBombError as err:
        # Pillow refuses above twice its own limit whatever `max_pixels` says.
        limit = min(limit, 2 * max_pixels_limit())
        raise InputFileError(path, _too_large(_declared_pixels(str(err)), limit)) from None
    except _DECODE_ERRORS as err:
        raise InputFileError(path, f"corrupt image header: {err}") from None
    with image:
        pixels = image.width * image.height
        if pixels > limit:
            declared = f"{image.width} x {image.height} = {pixels:,}"
            raise InputFileError(path, _too_large(declared, limit))
        yield image


def _declared_pixels(pillow_message: str) -> str:
    """The pixel count from Pillow's bomb message (it does not expose the size otherwise)."""
    match = re.search(r"\((\d+) pixels\)", pillow_message)
    if match:
        return f"{int(match.group(1)):,}"
    return f"more than {2 * max_pixels_limit():,}"  # Pillow raises above twice its limit


def _too_large(declared: str, limit: int) -> str:
    return (
        f"image too large: it declares {declared} pixels, over the limit of {limit:,} "
        "(a guard against decompression bombs)"
    )


def _to_rgb(image: Image.Image) -> Image.Image:
    """8-bit RGB without clipping deep images or exposing hidden colours under transparency."""
    if image.mode in _SIXTEEN_BIT_MODES:
        levels = np.asarray(image).astype(np.float64) / 257.0  # 65535 / 257 = 255
        image = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8))
    elif image.mode == "F":
        values = np.nan_to_num(np.asarray(image, dtype=np.float64), nan=0.0)
        if values.size and values.min() >= 0.0 and values.max() <= 1.0:
            values = values * 255.0  # a float image in [0, 1], as scientific tools write them
        image = Image.fromarray(np.clip(np.rint(values), 0, 255).astype(np.uint8))
    if image.mode in _ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")
