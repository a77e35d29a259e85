"""Ray for the duration of a job: the cluster at ``RAY_ADDRESS`` when set, else a local
instance sized to this machine. Cross-validation's fold trials and slide-scale prediction
both run on it."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

from glomx.errors import GlomxError
from glomx.processes import end_leftovers, recording


class RayAddressError(GlomxError, ConnectionError):
    """``RAY_ADDRESS`` names a cluster that does not answer."""


def check_reachable(address: str, timeout: float = 10.0) -> None:
    """A ``host:port`` (or ``ray://host:port``) Ray address that answers no TCP connection is a
    clear error now; Ray itself would retry for many minutes. ``auto`` and the like pass."""
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not (host and port.isdigit()):
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise RayAddressError(
            f"RAY_ADDRESS={address} is unreachable ({err.strerror or err}): start the Ray "
            "cluster there, or unset RAY_ADDRESS to use a local instance"
        ) from None


@contextmanager
def ray_session() -> Iterator[Any]:
    """Ray for the duration of a stage: the cluster at ``RAY_ADDRESS``, else a local instance
    sized to this machine, stopped afterwards, its processes recorded meanwhile so that the
    next stage ends them if this one is killed outright (:mod:`glomx.processes`). Yields the
    ``ray`` module. The caller's SIGTERM handler stays: ``ray.init`` would replace it."""
    import ray  # only the jobs that use Ray pay for importing it

    if ray.is_initialized():
        yield ray
        return
    sigterm = signal.getsignal(signal.SIGTERM)
    with ExitStack() as stack:
        if address := os.environ.get("RAY_ADDRESS"):
            check_reachable(address)
            ray.init(address=address, include_dashboard=False, configure_logging=False)
        else:
            end_leftovers()
            stack.enter_context(recording())
            ray.init(
                num_cpus=os.cpu_count() or 1,
                object_store_memory=512 * 2**20,
                include_dashboard=False,
                configure_logging=False,
            )
        stack.callback(ray.shutdown)
        if sigterm is not None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, sigterm)
        yield ray
