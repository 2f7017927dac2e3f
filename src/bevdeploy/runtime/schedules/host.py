"""The host schedules: ``sequential`` and ``branches`` (the ``frames`` schedule, which overlaps
consecutive frames, is ``schedules.frames``).

``sequential`` runs everything on the calling thread, LiDAR branch then camera branch, as
CUDA-BEVFusion does on its single stream (docs/reference.md#stage-order-and-streams). ``branches``
runs the LiDAR branch on the pipeline's worker thread while the calling thread runs the camera
branch; they join before the fuser. It lowers one frame's latency when neither branch fills the
cores.
"""

from __future__ import annotations

from concurrent.futures import wait

from bevdeploy.data.frame import Detections, Frame
from bevdeploy.runtime.schedules.base import Composition
from bevdeploy.runtime.timing import StageTimer


def sequential(pipeline: Composition, frame: Frame, timer: StageTimer) -> Detections:
    """LiDAR branch, then camera branch, then fuser + head + decode, on the calling thread."""
    points = pipeline.select_points(frame, timer)
    lidar_bev = pipeline.lidar_branch(points, timer)
    camera_bev = pipeline.camera_branch(frame, points, timer)
    return pipeline.detect(camera_bev, lidar_bev, timer)


def branches(pipeline: Composition, frame: Frame, timer: StageTimer) -> Detections:
    """The LiDAR branch on the pipeline's worker thread, the camera branch on the calling one;
    joined before the fuser. If either branch fails, the other is waited for (it must not run
    on into the next frame) and the first error is raised."""
    points = pipeline.select_points(frame, timer)
    lidar_timer = StageTimer()
    future = pipeline.submit(pipeline.lidar_branch, points, lidar_timer)
    try:
        camera_bev = pipeline.camera_branch(frame, points, timer)
    except BaseException:
        wait([future])
        raise
    lidar_bev = future.result()
    timer.ms.update(lidar_timer.ms)
    return pipeline.detect(camera_bev, lidar_bev, timer)
