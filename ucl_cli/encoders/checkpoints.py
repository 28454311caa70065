"""Reading checkpoints without running code from them, and loading them all-or-nothing.

`.safetensors` files hold tensors only. Pickled `torch.save` files are read with
`torch.load(weights_only=True)`, which refuses any global outside torch's allow list; the only
additions here are numpy's scalar and array reconstructors (plain data that older training scripts
stored next to the weights, e.g. a metric as a numpy float). A checkpoint that needs anything else
(a class, a function) is refused with the list of what it asked for.

`load_strict` loads every tensor or fails with the keys that did not match: a model that is partly
random after a failed load is never returned.
"""

from __future__ import annotations

import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ucl_cli.errors import ModelNotAvailableError


class UnsafeCheckpointError(ModelNotAvailableError):
    """A checkpoint holds pickled Python objects other than tensors and plain data."""


class IncompatibleWeightsError(ModelNotAvailableError):
    """A checkpoint's tensors do not match the architecture they are loaded into."""


def _numpy_data_globals() -> list[Any]:
    """numpy's scalar and array reconstructors and dtypes, under both module names numpy has
    used (`numpy.core` before 2.0, `numpy._core` since), so old pickles load under either."""
    import numpy as np

    try:
        from numpy._core import multiarray
    except ImportError:  # numpy < 1.26
        from numpy.core import multiarray
    allowed: list[Any] = [np.ndarray, np.dtype]
    for name in ("scalar", "_reconstruct"):
        function = getattr(multiarray, name)
        allowed += [
            (function, f"{module}.multiarray.{name}") for module in ("numpy.core", "numpy._core")
        ]
    for dtype in ("float16", "float32", "float64", "int32", "int64", "bool"):
        allowed.append(type(np.dtype(dtype)))
    return allowed


def _torch_load(path: Path) -> Any:
    with torch.serialization.safe_globals(_numpy_data_globals()):
        try:
            return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:
            if "mmap" not in str(err):
                raise
            # Files in torch's legacy (pre-zip) format cannot be memory-mapped.
            return torch.load(path, map_location="cpu", weights_only=True)


def _refusal(path: Path, err: Exception) -> UnsafeCheckpointError:
    try:
        wanted = torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:
        wanted = []
    detail = ", ".join(wanted[:5]) if wanted else str(err).splitlines()[-1][:200]
    return UnsafeCheckpointError(
        f"{path}: refusing to load: the checkpoint contains pickled Python objects besides tensors "
        f"({detail}) and unpickling them could run arbitrary code. Re-save only its state dict "
        "(torch.save(model.state_dict(), PATH)) or convert it to .safetensors in a trusted "
        "environment, and load that file instead"
    )


def read_checkpoint(path: str | Path) -> Any:
    """The raw object stored in a checkpoint file, read without running code from it."""
    path = Path(path)
    if not path.is_file():
        raise ModelNotAvailableError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except Exception as err:
            raise ModelNotAvailableError(
                f"{path}: not a readable safetensors file ({err})"
            ) from None
    try:
        return _torch_load(path)
    except pickle.UnpicklingError as err:
        raise _refusal(path, err) from None
    except Exception as err:
        raise ModelNotAvailableError(
            f"{path}: not a readable torch checkpoint ({type(err).__name__}: {err})"
        ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: unwraps {"state_dict": ...}, strips DDP's "module." prefix."""
    path = Path(path)
    loaded = read_checkpoint(path)
    if isinstance(loaded, Mapping) and isinstance(loaded.get("state_dict"), Mapping):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, Mapping) or not loaded:
        raise ModelNotAvailableError(f"{path}: holds no state dict of tensors")
    state = {str(k): v for k, v in loaded.items() if isinstance(v, torch.Tensor)}
    if len(state) != len(loaded):
        others = sorted(str(k) for k, v in loaded.items() if not isinstance(v, torch.Tensor))
        raise ModelNotAvailableError(f"{path}: state dict has non-tensor entries: {others[:5]}")
    if all(k.startswith("module.") for k in state):
        state = {k[len("module.") :]: v for k, v in state.items()}
    return state


def _examples(names: set[str]) -> str:
    shown = sorted(names)[:4]
    more = f" and {len(names) - len(shown)} more" if len(names) > len(shown) else ""
    return ", ".join(shown) + more


def load_strict(
    model: torch.nn.Module, state: Mapping[str, torch.Tensor], source: object, what: str
) -> None:
    """Load every tensor of `state` into `model`, or raise IncompatibleWeightsError naming keys."""
    expected = model.state_dict()
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    resized = {
        k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape)
    }
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({_examples(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({_examples(unexpected)})")
    if resized:
        problems.append(f"{len(resized)} of another shape ({_examples(resized)})")
    if problems:
        raise IncompatibleWeightsError(
            f"{source}: weights do not fit {what}: tensors "
            + "; ".join(problems)
            + ". Is this the checkpoint of that model?"
        )
    model.load_state_dict(state, strict=True)
