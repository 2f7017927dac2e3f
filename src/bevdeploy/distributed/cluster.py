"""Reaching a Ray cluster for ``--ray``: the options checked before anything loads, the address
refused fast when nothing answers there, and one connection for the duration of a command.

``--ray`` takes ``local`` (a Ray instance started in this process, on this machine only: what
a laptop or a single big box needs), ``auto`` (the cluster this machine already belongs to,
found the way ``ray status`` finds it) or ``HOST:PORT`` (the head node's GCS address of an
existing cluster, as ``ray start --head`` prints it). Ray itself would retry an unreachable
address for minutes; a TCP probe first fails in seconds and names the address.

Ray is imported only here and in the pool, inside functions, so that the CLI and the runtime
import without it (it is the ``[ray]`` extra).
"""

from __future__ import annotations

import ipaddress
import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from types import ModuleType

from bevdeploy.errors import ConfigError

RAY_MODES = ("auto", "local")
PROBE_TIMEOUT_S = 5.0  # one TCP connect to the head; an unreachable address fails well under 30 s
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2  # results are kilobytes; frames never cross it


@dataclass(frozen=True)
class RayOptions:
    """Where and how wide a Ray run is: the ``--ray`` address, ``--workers`` actors, each
    reserving ``--cpus-per-worker`` CPUs and ``--gpus-per-worker`` GPUs."""

    address: str
    workers: int = 2
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    @property
    def host_port(self) -> tuple[str, int] | None:
        """``(host, port)`` of an explicit address, ``None`` for ``auto`` and ``local``."""
        if self.address in RAY_MODES:
            return None
        host, _, port = self.address.removeprefix("ray://").rpartition(":")
        return host, int(port)


def check_ray_options(address: str, *, workers: int = 2, cpus_per_worker: float = 1.0,
                      gpus_per_worker: float = 0.0) -> RayOptions:
    """The options of a Ray run, checked without importing Ray or touching the network."""
    if address not in RAY_MODES:
        host, sep, port = address.removeprefix("ray://").rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ConfigError(f"{address!r} is not a cluster address: give auto, local or "
                              "HOST:PORT (the head's address from `ray start --head`)",
                              field="--ray")
    if workers < 1:
        raise ConfigError(f"must be at least 1, got {workers}", field="--workers")
    if cpus_per_worker <= 0:
        raise ConfigError(f"must be positive, got {cpus_per_worker}", field="--cpus-per-worker")
    if gpus_per_worker < 0:
        raise ConfigError(f"must be 0 or more, got {gpus_per_worker}", field="--gpus-per-worker")
    return RayOptions(address, workers, cpus_per_worker, gpus_per_worker)


def import_ray() -> ModuleType:
    """``ray``, or a ``ConfigError`` saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise ConfigError(f"--ray needs Ray ({exc}): pip install 'bevdeploy[ray]'",
                          field="--ray") from exc
    return ray


def _is_loopback(host: str) -> bool:
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def probe(address: str, host: str, port: int, timeout: float = PROBE_TIMEOUT_S) -> None:
    """A ``ConfigError`` naming ``address`` unless a TCP connection to it opens in time."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            pass
    except OSError as exc:
        reason = "timed out" if isinstance(exc, TimeoutError) else (exc.strerror or str(exc))
        raise ConfigError(f"cannot reach the Ray cluster at {address}: {reason} (is `ray start "
                          "--head` running there, and is the port open?)", field="--ray") from exc


def _quiet_environment(options: RayOptions) -> None:
    """No usage statistics sent anywhere; a cluster on this machine (``local`` or a loopback
    address) is reached over loopback only. Set before Ray is imported, which reads them."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    hp = options.host_port
    if options.address == "local" or (hp is not None and _is_loopback(hp[0])):
        # Ray then takes 127.0.0.1 as this node's address instead of the first interface's
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")


@contextmanager
def connect(options: RayOptions) -> Iterator[ModuleType]:
    """``ray``, connected to the cluster of ``options`` for the block (reused when this process
    is already connected, e.g. an embedding application; then left connected)."""
    _quiet_environment(options)
    hp = options.host_port
    if hp is not None:
        probe(options.address, *hp)
    ray = import_ray()
    if ray.is_initialized():
        yield ray
        return
    import logging

    common = {"log_to_driver": False, "logging_level": logging.WARNING}
    try:
        if options.address == "local":
            ray.init(num_cpus=max(1, round(options.workers * options.cpus_per_worker)),
                     num_gpus=int(options.workers * options.gpus_per_worker + 0.999),
                     object_store_memory=LOCAL_OBJECT_STORE_BYTES, include_dashboard=False,
                     _node_ip_address="127.0.0.1", **common)
        else:
            ray.init(address=options.address, **common)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(f"cannot connect to the Ray cluster at {options.address}: {exc}",
                          field="--ray") from exc
    try:
        yield ray
    finally:
        ray.shutdown()
