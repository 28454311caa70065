"""From the paths a user typed to a checked, ordered list of media files.

What a file is comes from its content: Pillow and libsndfile each try the header (no pixels or
samples are decoded here), so a text file named `.jpg` is "not an image", and a PNG named `.wav`
is reported as the image it is. Names matter only when walking a folder: there, files whose
extension names neither an image nor an audio format (`labels.csv`, `README`) are ignored without
a warning, as are hidden files and folders; files named like media are checked by content and
each bad one is skipped with its reason, or raised at once with `strict`.

Order is deterministic: arguments in the order given, each folder's files sorted by their path
inside it; a file reached twice is listed once.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from PIL import Image

from ucl_cli.errors import InputFileError, UclError, UsageError
from ucl_cli.media.audio import AudioInfo, not_audio_reason, sniff_audio
from ucl_cli.media.files import (
    AUDIO_EXTENSIONS,
    UNREADABLE_AUDIO_EXTENSIONS,
    UNREADABLE_IMAGE_EXTENSIONS,
    describe_content,
    is_hidden,
    read_head,
    require_file,
    signature_of,
)
from ucl_cli.media.images import ImageInfo, not_an_image_reason, sniff_image
from ucl_cli.modality import Modality

# Told about each file that is skipped (non-strict mode), e.g. to log "skipping PATH: reason".
SkipCallback = Callable[[InputFileError], None]

MEDIA_MODALITIES = (Modality.IMAGE, Modality.AUDIO)


@dataclass(frozen=True)
class MediaFile:
    path: Path
    modality: Modality


@dataclass
class MediaCollection:
    """The usable files, in order, and what was left out and why.

    skipped: one InputFileError (path and reason) per file that looked like media but cannot be
      used. ignored: files inside folders whose names are not media (never warned about).
    """

    files: list[MediaFile] = field(default_factory=list)
    skipped: list[InputFileError] = field(default_factory=list)
    ignored: list[Path] = field(default_factory=list)

    @property
    def paths(self) -> list[Path]:
        return [item.path for item in self.files]

    @property
    def modalities(self) -> set[Modality]:
        return {item.modality for item in self.files}

    def skip_summary(self) -> str | None:
        """One line for the end of a run ("skipped 2 of 9 files ..."), or None if none was."""
        if not self.skipped:
            return None
        total = len(self.files) + len(self.skipped)
        noun = "file" if total == 1 else "files"
        return f"skipped {len(self.skipped)} of {total} {noun} that could not be read"


def detect_modality(
    path: str | os.PathLike[str],
    *,
    expected: Modality | str | None = None,
    max_pixels: int | None = None,
) -> Modality:
    """Image or audio, decided from the file's content; InputFileError if it is neither, is
    damaged, or is not the `expected` modality."""
    path = require_file(path)
    wanted = Modality(expected) if expected is not None else None
    if wanted is not None and wanted not in MEDIA_MODALITIES:
        raise ValueError(f"files hold images or audio, not {wanted.value}")
    order = (wanted,) if wanted is not None else MEDIA_MODALITIES
    for modality in order:
        if _sniff(path, modality, max_pixels) is not None:
            return modality
    if wanted is not None:
        raise InputFileError(path, _not_expected_reason(path, wanted, max_pixels))
    raise InputFileError(path, _unrecognised_reason(path))


def collect_media(
    paths: Iterable[str | os.PathLike[str]],
    modality: Modality | str | None = None,
    *,
    strict: bool = False,
    on_skip: SkipCallback | None = None,
    max_pixels: int | None = None,
) -> MediaCollection:
    """Expand files and folders (recursively) into checked media files of `modality` (or of
    either modality when None).

    With `strict`, the first bad file raises its InputFileError; otherwise each one is passed to
    `on_skip` and listed in `skipped`, and the rest are used.
    """
    wanted = Modality(modality) if modality is not None else None
    collection = MediaCollection()
    seen: set[Path] = set()

    def skip(error: InputFileError) -> None:
        if strict:
            raise error
        collection.skipped.append(error)
        if on_skip is not None:
            on_skip(error)

    for argument in paths:
        argument = Path(argument)
        candidates = (
            _walk(argument, wanted, collection.ignored, skip) if argument.is_dir() else [argument]
        )
        for candidate in candidates:
            identity = candidate.resolve()
            if identity in seen:
                continue
            seen.add(identity)
            try:
                found = detect_modality(candidate, expected=wanted, max_pixels=max_pixels)
            except InputFileError as error:
                skip(error)
                continue
            collection.files.append(MediaFile(candidate, found))
    return collection


@dataclass(frozen=True)
class QueryInputs:
    """A query run's files, checked: queries and candidates that exist, are readable and are
    images or audio by their headers (`skipped` of each holds the files left out, and why)."""

    queries: MediaCollection
    candidates: MediaCollection
    # the modality of the collections ranked beside (or instead of) the candidate files
    collection_modality: Modality | None = None

    @property
    def candidate_modality(self) -> Modality:
        if self.candidates.files:
            return next(iter(self.candidates.modalities))
        assert self.collection_modality is not None  # collect_query_inputs ensures one
        return self.collection_modality

    def same_modality_queries(self) -> int:
        """Queries of the candidates' own modality: ranked through the bank all the same, but
        not the cross-modal search a user usually means."""
        return sum(1 for f in self.queries.files if f.modality == self.candidate_modality)


def collect_query_inputs(
    queries: Iterable[str | os.PathLike[str]],
    candidates: Iterable[str | os.PathLike[str]],
    *,
    strict: bool = False,
    on_query_skip: SkipCallback | None = None,
    on_skip: SkipCallback | None = None,
    collection_modality: Modality | None = None,
) -> QueryInputs:
    """Check every named query and candidate by its header (nothing decoded, no model needed),
    so that a missing or unreadable path is reported at once, before any model is loaded.

    A bad query goes to `on_query_skip`, a bad candidate to `on_skip`, and both are left out
    (`strict`: the first bad file raises). Raises the query's InputFileError when the only query
    is bad, UclError when every query is, UsageError when no candidate is usable or the
    candidates mix images and audio. `collection_modality`: collections of that modality are
    ranked too, so candidate files may be absent (but not of the other modality).
    """
    candidates = list(candidates)
    found_queries = collect_media(queries, strict=strict)
    failed = found_queries.skipped
    if not found_queries.files and len(failed) == 1:
        raise failed[0]
    if not found_queries.files and not failed:
        raise UsageError("no query files given")
    for error in failed:
        if on_query_skip is not None:
            on_query_skip(error)
    if not found_queries.files:
        raise UclError(f"none of the {len(failed):,} query files could be read")
    found = collect_media(candidates, strict=strict, on_skip=on_skip)
    if not found.files and collection_modality is None:
        if not candidates:
            raise UsageError("no candidates given: name files or folders, or a collection")
        where = ", ".join(str(c) for c in candidates)
        raise UsageError(f"no usable candidate image or audio files in {where}")
    kinds = found.modalities | ({collection_modality} if collection_modality else set())
    if len(kinds) > 1:
        raise UsageError(
            "the candidates mix images and audio; pass one kind "
            "(e.g. a folder of audio clips for an image query)"
            + (
                f"; the collections hold {collection_modality.value}"
                if collection_modality is not None
                else ""
            )
        )
    return QueryInputs(found_queries, found, collection_modality)


def media_extensions(modality: Modality | None = None) -> frozenset[str]:
    """Lower-case extensions (".jpg", ".wav") that name files of `modality` (None: either)."""
    if modality is Modality.IMAGE:
        return _image_extensions()
    if modality is Modality.AUDIO:
        return AUDIO_EXTENSIONS
    return _image_extensions() | AUDIO_EXTENSIONS


def _walked_extensions(modality: Modality | None) -> frozenset[str]:
    """What a folder walk checks: media names, plus media names no reader here takes."""
    unreadable = {
        Modality.IMAGE: UNREADABLE_IMAGE_EXTENSIONS,
        Modality.AUDIO: UNREADABLE_AUDIO_EXTENSIONS,
    }.get(modality, UNREADABLE_IMAGE_EXTENSIONS | UNREADABLE_AUDIO_EXTENSIONS)
    return media_extensions(modality) | unreadable


@cache
def _image_extensions() -> frozenset[str]:
    Image.init()  # loads every plugin, so the list is every format Pillow reads
    return frozenset(ext.lower() for ext in Image.registered_extensions())


def _walk(
    root: Path,
    wanted: Modality | None,
    ignored: list[Path],
    skip: Callable[[InputFileError], None],
) -> list[Path]:
    """Media-named files under `root`, sorted by their path inside it; hidden entries pruned.

    Symlinked folders are followed once each (a link back up the tree does not loop).
    """
    extensions = _walked_extensions(wanted)
    visited: set[tuple[int, int]] = set()
    found: list[Path] = []

    def unreadable(err: OSError) -> None:
        skip(InputFileError(err.filename, f"cannot list folder: {err.strerror or err}"))

    for folder, subfolders, names in os.walk(root, onerror=unreadable, followlinks=True):
        status = os.stat(folder)
        if (status.st_dev, status.st_ino) in visited:
            subfolders[:] = []
            continue
        visited.add((status.st_dev, status.st_ino))
        subfolders[:] = sorted(name for name in subfolders if not is_hidden(name))
        for name in names:
            if is_hidden(name):
                continue
            path = Path(folder, name)
            (found if path.suffix.lower() in extensions else ignored).append(path)
    return sorted(found, key=lambda path: path.relative_to(root).parts)


def _sniff(path: Path, modality: Modality, max_pixels: int | None) -> ImageInfo | AudioInfo | None:
    if modality is Modality.IMAGE:
        return sniff_image(path, max_pixels=max_pixels)
    return sniff_audio(path)


def _not_expected_reason(path: Path, wanted: Modality, max_pixels: int | None) -> str:
    """Why a file is not of the expected modality; names the other modality when it is that."""
    other = Modality.AUDIO if wanted is Modality.IMAGE else Modality.IMAGE
    try:
        info = _sniff(path, other, max_pixels)
    except InputFileError:
        info = None  # damaged as the other modality too: describe its bytes instead
    expected_noun = "an image" if wanted is Modality.IMAGE else "an audio file"
    if info is not None:
        what = f"{info.format} audio" if other is Modality.AUDIO else f"a {info.format} image"
        return f"not {expected_noun}: it is {what}"
    if wanted is Modality.IMAGE:
        return not_an_image_reason(path)
    return not_audio_reason(path)


def _unrecognised_reason(path: Path) -> str:
    """Why neither Pillow nor libsndfile took a file, phrased by what it claims to be."""
    head = read_head(path)
    found = signature_of(head)
    claimed = found[1] if found is not None else None
    suffix = path.suffix.lower()
    if claimed == "image" or (claimed is None and suffix in _image_extensions()):
        return not_an_image_reason(path)
    if claimed == "audio" or (claimed is None and suffix in AUDIO_EXTENSIONS):
        return not_audio_reason(path)
    return (
        f"unsupported format: the content is {describe_content(head)}; ucl reads images "
        "(any format Pillow reads) and audio (wav, flac, ogg/oga with vorbis or opus, mp3)"
    )
