"""File-level facts shared by the image and audio readers: is the path a readable, non-empty file,
and, when no reader accepts it, what does its content look like?

The description exists only to make error messages precise ("the content is text ('hello')",
"an MP4/M4A container"); whether a file is an image or audio is always decided by the decoders
themselves (Pillow, libsndfile), never by this table or by the file name.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ucl_cli.errors import InputFileError

# Bytes read to describe a file's content in an error message.
HEAD_BYTES = 64

# Extensions that name a modality. Used only to phrase errors ("not an image: ...") and to pick
# candidate files while walking a folder; the content decides what a file is.
AUDIO_EXTENSIONS = frozenset(
    {".wav", ".wave", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".aifc", ".au",
     ".snd", ".caf", ".w64", ".rf64"}
)  # fmt: skip
# Named like media but not readable here; walked into anyway, so that each gets its reason
# ("unsupported format: ... MP4/M4A container") instead of vanishing from a folder unnoticed.
UNREADABLE_AUDIO_EXTENSIONS = frozenset({".m4a", ".aac", ".wma"})
UNREADABLE_IMAGE_EXTENSIONS = frozenset({".heic", ".heif", ".avif", ".svg"})

# (magic at offset 0, name, kind). Kind "image" reads "a NAME image", "audio" reads "NAME audio",
# "other" is the whole phrase.
_SIGNATURES: tuple[tuple[bytes, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "PNG", "image"),
    (b"\xff\xd8\xff", "JPEG", "image"),
    (b"GIF8", "GIF", "image"),
    (b"II*\x00", "TIFF", "image"),
    (b"MM\x00*", "TIFF", "image"),
    (b"BM", "BMP", "image"),
    (b"8BPS", "Photoshop (PSD)", "image"),
    (b"fLaC", "FLAC", "audio"),
    (b"OggS", "Ogg", "audio"),
    (b"ID3", "MP3", "audio"),
    (b"FORM", "AIFF", "audio"),
    (b".snd", "AU", "audio"),
    (b"caff", "CAF", "audio"),
    (b"RF64", "RF64 WAV", "audio"),
    (b"%PDF", "a PDF document", "other"),
    (b"PK\x03\x04", "a ZIP archive", "other"),
    (b"\x1f\x8b", "a gzip archive", "other"),
    (b"\x1aE\xdf\xa3", "a Matroska/WebM video", "other"),
    (b"\x7fELF", "an ELF executable", "other"),
    (b"\x93NUMPY", "a NumPy array (.npy)", "other"),
    (b"SQLite format 3\x00", "an SQLite database", "other"),
)
_RIFF_KINDS = {
    b"WAVE": ("WAV", "audio"),
    b"WEBP": ("WebP", "image"),
    b"AVI ": ("an AVI video", "other"),
}
_HEIF_BRANDS = (b"heic", b"heix", b"mif1", b"msf1", b"avif", b"avis")


def require_file(path: str | os.PathLike[str]) -> Path:
    """The path as a `Path` if it names a non-empty regular file we may read; else InputFileError.

    Checked before any decoder runs, so that "missing" or "empty" is reported as such instead of
    as a decoder's "cannot identify" message.
    """
    path = Path(path)
    try:
        info = path.stat()
    except FileNotFoundError:
        raise InputFileError(path, "file not found") from None
    except OSError as err:
        raise InputFileError(path, f"cannot be read: {err.strerror or err}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputFileError(path, "is a directory, not a file")
    if not stat.S_ISREG(info.st_mode):
        raise InputFileError(path, "not a regular file (a pipe, socket or device)")
    if info.st_size == 0:
        raise InputFileError(path, "empty file (0 bytes)")
    if not os.access(path, os.R_OK):
        raise InputFileError(path, "cannot be read: permission denied")
    return path


def read_head(path: Path, size: int = HEAD_BYTES) -> bytes:
    with path.open("rb") as handle:
        return handle.read(size)


def signature_of(head: bytes) -> tuple[str, str] | None:
    """(name, kind) recognised from a file's first bytes, or None."""
    if head[:4] == b"RIFF" and head[8:12] in _RIFF_KINDS:
        return _RIFF_KINDS[head[8:12]]
    if head[4:8] == b"ftyp":
        if head[8:12] in _HEIF_BRANDS:
            return "HEIF/AVIF", "image"
        return "an MP4/M4A container (AAC or video)", "other"
    for magic, name, kind in _SIGNATURES:
        if head.startswith(magic):
            return name, kind
    return None


def describe_content(head: bytes) -> str:
    """A short phrase for an error message: what the bytes look like to a person."""
    found = signature_of(head)
    if found is not None:
        name, kind = found
        return {"image": f"a {name} image", "audio": f"{name} audio"}.get(kind, name)
    text = _as_text(head)
    if text is not None:
        shown = " ".join(text.split())[:24].rstrip()
        return f"text ({shown!r})" if shown else "blank text"
    return "bytes " + " ".join(f"{b:02x}" for b in head[:8]) + " (no known format)"


def _as_text(head: bytes) -> str | None:
    """The head as text if it plausibly is text (UTF-8, or UTF-16 with a byte-order mark)."""
    for bom, codec in ((b"\xff\xfe", "utf-16-le"), (b"\xfe\xff", "utf-16-be")):
        if head.startswith(bom):
            return head[len(bom) :].decode(codec, errors="ignore")
    # The head may end inside a multi-byte character: allow up to three trailing bytes off.
    for cut in range(4):
        try:
            text = head[: len(head) - cut].decode("utf-8")
            break
        except UnicodeDecodeError:
            continue
    else:
        return None
    if any(ord(char) < 32 and char not in "\t\n\r\f" for char in text):
        return None
    return text


def is_hidden(name: str) -> bool:
    """Dot files and dot folders (".DS_Store", ".git", "._photo.jpg") are never media we want."""
    return name.startswith(".")
