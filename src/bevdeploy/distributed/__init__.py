"""Beyond one machine: the frame loop's frames run by a pool of Ray actors (``--ray``).

A Ray run is the same run as in one process — the same ``frame_loop.run_frames``, error
policy, run record, progress and Ctrl-C, the same sinks fed in frame order — with the detector
replaced by a ``RayDetectorPool`` (a ``frame_loop.FramePool``): each actor opens the detector
and the dataset once, frames are loaded and detected on the workers, and only the detections
and the small part of each frame the sinks read come back.

``cluster`` reaches the cluster (``--ray auto|local|HOST:PORT``), ``worker`` is what runs on a
worker and what crosses the object store, ``pool`` schedules, retries and orders the frames and
admits workers (same version and package as the driver). ``probe`` (imported on its own: it
pulls in the optimizer) scores ``optimize --sensitivity-map``'s groups on the same kind of
workers. Ray is the ``[ray]`` extra and is imported only when ``--ray`` is used.
"""

from bevdeploy.distributed.cluster import RayOptions, check_ray_options, connect
from bevdeploy.distributed.pool import RayDetectorPool, WorkerLost
from bevdeploy.distributed.worker import FrameOutcome, FrameWorker, SourceSpec, WorkerFacts

__all__ = ["FrameOutcome", "FrameWorker", "RayDetectorPool", "RayOptions", "SourceSpec",
           "WorkerFacts", "WorkerLost", "check_ray_options", "connect"]
