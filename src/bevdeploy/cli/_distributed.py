"""The detector of ``infer`` and ``eval``: the one of this process, or with ``--ray`` a pool of
workers on a Ray cluster (``bevdeploy.distributed``) that the same frame loop drives.

Kept apart from the commands so that they change by one ``with`` line, and so that Ray is
imported only when ``--ray`` is given (the CLI imports without the ``[ray]`` extra).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from bevdeploy.distributed.cluster import RayOptions, check_ray_options
from bevdeploy.errors import ConfigError


def ray_options(address: str | None, workers: int, cpus_per_worker: float,
                gpus_per_worker: float) -> RayOptions | None:
    """The checked ``--ray`` options; ``None`` without ``--ray``, where ``--workers`` and the
    per-worker reservations are refused rather than ignored."""
    if address is None:
        given = RayOptions("local", workers, cpus_per_worker, gpus_per_worker)
        if given != RayOptions("local"):
            raise ConfigError("--workers, --cpus-per-worker and --gpus-per-worker size a Ray "
                              "pool: add --ray local|auto|HOST:PORT", field="--ray")
        return None
    return check_ray_options(address, workers=workers, cpus_per_worker=cpus_per_worker,
                             gpus_per_worker=gpus_per_worker)


@contextmanager
def open_detector(model: Any, ray: RayOptions | None, source: Any, *,
                  keep_sensors: bool = False, **open_kwargs: Any) -> Iterator[Any]:
    """``detector.open(model, **open_kwargs)``, or with ``ray`` a ``RayDetectorPool`` whose
    workers each open it (package from its directory, frames from the dataset root: paths
    every node must read); closed at the end of the block. ``keep_sensors`` ships the images
    and points back too (renders need them)."""
    from bevdeploy import detector
    from bevdeploy.package import DeployPackage

    if ray is None:
        with detector.open(model, **open_kwargs) as local:
            yield local
        return
    from bevdeploy.data.sources import DatasetSource
    from bevdeploy.distributed import RayDetectorPool, connect

    if not isinstance(source, DatasetSource):
        raise ConfigError("--ray runs the frames of a dataset split (--data); one frame or a "
                          "bag runs in this process", field="--ray")
    if isinstance(model, DeployPackage):
        model = model.root.resolve()
    if open_kwargs.get("threads") is None:  # a worker uses the CPUs it reserved, no more
        open_kwargs["threads"] = max(1, math.ceil(ray.cpus_per_worker))
    with connect(ray), RayDetectorPool(source, model, open_kwargs, ray,
                                       keep_sensors=keep_sensors) as pool:
        yield pool
