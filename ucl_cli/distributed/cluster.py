"""Where `--cluster` (or UCL_CLUSTER) sends the work, and connecting to it.

- none (the default): everything runs in this process, as without Ray.
- `local`: start a Ray cluster on this machine, for this run (asked for 127.0.0.1, Ray 2.60
  still listens on every interface, guarded by the token authentication it turns on).
- `auto`: connect to a running cluster, found as Ray's own `address="auto"` finds it (the
  RAY_ADDRESS variable, or the cluster started on this machine by `ray start --head`).
- `ray://HOST:PORT`: connect through Ray Client to a cluster's head node.

Ray is imported here, on connecting, and nowhere else on the driver.
"""

from __future__ import annotations

import logging
import os
import re
from typing import Any

from ucl_cli.errors import UsageError

CLUSTER_VARIABLE = "UCL_CLUSTER"
CLIENT_ADDRESS = re.compile(r"^ray://[A-Za-z0-9._-]+:\d{1,5}$")


def cluster_spec(flag: str | None) -> str | None:
    """The cluster a command uses: `--cluster`, else UCL_CLUSTER, else None (in-process); a
    usage error (before anything slow) for anything but auto, local or ray://HOST:PORT."""
    spec = (flag or os.environ.get(CLUSTER_VARIABLE, "")).strip()
    if not spec or spec == "none":
        return None
    if spec in ("auto", "local") or CLIENT_ADDRESS.match(spec):
        return spec
    named_by = "--cluster" if flag else CLUSTER_VARIABLE
    raise UsageError(
        f"{named_by} {spec!r}: use auto (a running Ray cluster), local (start one on this "
        "machine) or ray://HOST:PORT (Ray Client)"
    )


def import_ray() -> Any:
    """Ray, or a usage error saying how to install it."""
    try:
        import ray
    except ImportError:
        raise UsageError(
            "--cluster needs Ray, which is not installed: pip install 'ucl-cli[distributed]'"
        ) from None
    return ray


def connect(spec: str, *, num_cpus: int | None = None) -> bool:
    """Connect this process to the cluster `spec` names (unless Ray already is connected);
    True when this call started or joined it (the caller then shuts it down)."""
    ray = import_ray()
    if ray.is_initialized():
        return False
    quiet: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if spec == "local":
        ray.init(
            address="local",  # a new cluster, even where a crashed one left its address behind
            num_cpus=num_cpus,
            include_dashboard=False,
            _node_ip_address="127.0.0.1",  # asked; Ray 2.60 listens on every interface anyway
            **quiet,
        )
    else:
        try:
            ray.init(address=spec, **quiet)
        except (ConnectionError, RuntimeError) as err:
            from ucl_cli.errors import UclError

            raise UclError(f"cannot connect to the Ray cluster at {spec}: {err}") from None
    return True


def disconnect() -> None:
    import_ray().shutdown()
