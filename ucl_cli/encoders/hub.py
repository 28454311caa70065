"""Model files in the Hugging Face hub cache: find them offline, fetch them when online.

Loading a model never touches the network: every file is looked up in the local hub cache (the
`HF_HUB_CACHE` / `HF_HOME` layout, `models--ORG--NAME/snapshots/COMMIT/FILE`) and a missing one is
a `MissingModelFileError` that says how to get it, raised at once. Only `download` (behind
`ucl models fetch`) goes online, after a short reachability probe so that a machine without
internet gets its answer within seconds rather than after the hub client's retries.

The cache location is read from the environment at each call (huggingface_hub reads it once, at
import), so tests and users can point `HF_HOME` / `HF_HUB_CACHE` elsewhere at any time.
"""

from __future__ import annotations

import hashlib
import os
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ucl_cli.errors import ModelNotAvailableError

_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
_DEFAULT_ENDPOINT = "https://huggingface.co"
PROBE_TIMEOUT_S = 5.0


@dataclass(frozen=True)
class HubFile:
    """One file of a model-hub repository that a model needs.

    repo: repository id ("laion/CLIP-ViT-B-32-laion2B-s34B-b79K").
    filename: the preferred file; `fallbacks` are other names in the same repository that serve
      equally (a `.bin` twin of a `.safetensors` file), tried in order.
    aliases: other ids of the same repository (the hub renamed "roberta-base" to
      "FacebookAI/roberta-base"; each id has its own cache folder).
    revision: branch, tag or commit; None means "main".
    sha256: checksum of the preferred file when known; None when it could not be verified.
    role: what the backend uses the file for ("weights", "text_config", ...).
    optional: a missing optional file is not an error (the backend has a default).
    """

    repo: str
    filename: str
    role: str = "weights"
    fallbacks: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()
    revision: str | None = None
    sha256: str | None = None
    optional: bool = False

    @property
    def candidates(self) -> list[tuple[str, str]]:
        """(repo, filename) pairs in the order they are looked for."""
        return [
            (r, f) for r in (self.repo, *self.aliases) for f in (self.filename, *self.fallbacks)
        ]


class MissingModelFileError(ModelNotAvailableError):
    """Model files are not in the local hub cache (nothing was downloaded)."""

    def __init__(
        self, key: str, files: list[HubFile], cache: Path, *, weights: HubFile | None = None
    ):
        self.key = key
        self.files = list(files)
        self.cache_dir = cache
        by_repo: dict[str, list[str]] = {}
        for file in self.files:
            name = " or ".join((file.filename, *file.fallbacks))
            by_repo.setdefault(file.repo, []).append(name)
        listed = "; ".join(
            f"{', '.join(names)} (hub repo {repo})" for repo, names in by_repo.items()
        )
        how = (
            f"On a machine with internet access run `ucl models fetch {key}` and copy its hub "
            "cache here (or point HF_HOME / HF_HUB_CACHE at a copy)"
        )
        if weights is not None and weights in self.files:
            how += (
                f", or download {weights.filename} yourself and pass it to `ucl index`, `query` "
                f"or `eval` with {weights_flag(key)}"
            )
        others = {
            repo: names
            for repo, names in by_repo.items()
            if weights is None or repo != weights.repo
        }
        if others:
            how += "; the other files can also be fetched with " + " and ".join(
                f"`hf download {repo} {' '.join(names)}`" for repo, names in others.items()
            )
        super().__init__(f"{key}: missing from the model cache {cache}: {listed}. {how}.")


class ChecksumMismatchError(ModelNotAvailableError):
    """A model file does not have the checksum the registry states for it."""


def is_true(value: str | None) -> bool:
    return value is not None and value.strip().upper() in _TRUE_VALUES


def offline() -> bool:
    """True when the user asked the hub clients to stay offline (HF_HUB_OFFLINE and the like)."""
    return is_true(os.environ.get("HF_HUB_OFFLINE")) or is_true(
        os.environ.get("TRANSFORMERS_OFFLINE")
    )


def cache_dir() -> Path:
    """The hub cache folder, following huggingface_hub's precedence, read now (not at import)."""
    explicit = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if explicit:
        return Path(os.path.expandvars(explicit)).expanduser()
    home = os.environ.get("HF_HOME")
    if not home:
        xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        home = os.path.join(xdg, "huggingface")
    return Path(os.path.expandvars(home)).expanduser() / "hub"


def endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or _DEFAULT_ENDPOINT).rstrip("/")


def find_cached(file: HubFile) -> Path | None:
    """The cached path of `file` (or of a fallback or alias), or None. Never goes online."""
    from huggingface_hub import try_to_load_from_cache

    root = cache_dir()
    for repo, filename in file.candidates:
        found = try_to_load_from_cache(repo, filename, cache_dir=root, revision=file.revision)
        if isinstance(found, str) and os.path.isfile(found):
            return Path(found)
    return None


def locate(file: HubFile) -> Path | None:
    """The cached path of `file`, verified against its checksum when one is stated; None if absent.

    Never goes online. Raises ChecksumMismatchError for a file that is not the one named.
    """
    path = find_cached(file)
    if path is not None and file.sha256 and path.name == Path(file.filename).name:
        verify_sha256(path, file.sha256)
    return path


def verify_sha256(path: Path, expected: str) -> None:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 22), b""):
            digest.update(block)
    if digest.hexdigest() != expected.lower():
        raise ChecksumMismatchError(
            f"{path}: sha256 is {digest.hexdigest()}, expected {expected}; the file is corrupt or "
            "not the one the registry names. Delete it and fetch it again."
        )


def ensure_reachable() -> None:
    """Raise ModelNotAvailableError within seconds when the hub cannot be reached."""
    if offline():
        raise ModelNotAvailableError(
            "cannot download: HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) is set; unset it on a "
            "machine with internet access, or copy a hub cache that has the files and point "
            "HF_HOME / HF_HUB_CACHE at it"
        )
    url = endpoint()
    request = urllib.request.Request(url, method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=PROBE_TIMEOUT_S):
            pass
    except urllib.error.HTTPError:
        return  # the server answered: reachable
    except (urllib.error.URLError, OSError) as err:
        reason = getattr(err, "reason", err)
        raise ModelNotAvailableError(
            f"cannot download: the model hub {url} is not reachable from this machine ({reason}); "
            "run the command on a machine with internet access and copy the cache "
            f"({cache_dir()}), or pass a file you downloaded to `ucl index`, `query` or `eval` "
            "with `--image-text-weights PATH` or `--text-audio-weights PATH`"
        ) from None


def weights_flag(key: str) -> str:
    """The flag of `ucl index`, `query` and `eval` that gives model `key` a local checkpoint, as
    the messages that recommend it write it."""
    from ucl_cli.encoders.registry import get_spec  # here: the registry imports this module
    from ucl_cli.errors import UclError

    try:
        modalities = set(get_spec(key).modalities)
    except UclError:
        modalities = set()
    if "image" in modalities and "audio" not in modalities:
        return "`--image-text-weights PATH`"
    if "audio" in modalities and "image" not in modalities:
        return "`--text-audio-weights PATH`"
    return "`--image-text-weights PATH` or `--text-audio-weights PATH`"


def download(file: HubFile) -> Path | None:
    """Download `file` (or its first fallback that exists) into the hub cache; return its path.

    None only for an optional file that the repository does not have.
    """
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
    )

    cached = find_cached(file)
    if cached is not None:
        return cached
    if file.optional and offline():
        return None  # cannot tell whether the hub has it; nothing needs it
    ensure_reachable()
    last_error: Exception | None = None
    for repo, filename in file.candidates:
        try:
            path = Path(
                hf_hub_download(
                    repo,
                    filename,
                    revision=file.revision,
                    cache_dir=cache_dir(),
                    etag_timeout=PROBE_TIMEOUT_S,
                )
            )
        except GatedRepoError:
            raise ModelNotAvailableError(
                f"hub repo {repo} is gated: accept its terms on {endpoint()}/{repo} and log in "
                "(`hf auth login`), then fetch again"
            ) from None
        except LocalEntryNotFoundError as err:  # the hub stopped answering: not a missing file
            raise ModelNotAvailableError(
                f"downloading {filename} from {repo} failed: {err}"
            ) from None
        except (EntryNotFoundError, RepositoryNotFoundError) as err:
            last_error = err
            continue
        except Exception as err:  # network and server errors of any client version
            raise ModelNotAvailableError(
                f"downloading {filename} from hub repo {repo} failed: {err}"
            ) from None
        if file.sha256 and filename == file.filename:
            verify_sha256(path, file.sha256)
        return path
    if file.optional:
        return None
    others = f" (nor {', '.join(file.fallbacks)})" if file.fallbacks else ""
    raise ModelNotAvailableError(
        f"hub repo {file.repo} has no file {file.filename}{others}: {last_error}"
    )
