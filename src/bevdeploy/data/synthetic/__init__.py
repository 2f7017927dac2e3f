"""A procedural, seeded world written as a nuScenes ``v1.0-mini`` dataset
(docs/architecture.md#synthetic-world).

``write_world`` is what ``bevdeploy synth`` calls. The rig (``CAMERAS``, ``LIDAR``) and
``background_color`` / ``background_image`` are public so that other modules' tests can reason
about the generated files: where a box projects, and what a pixel shows when no object is there.

Modules: ``rig`` (sensor constants), ``world`` (road, ego motion, actors), ``lidar``
(ray-caster), ``camera`` (z-buffer renderer), ``writer`` (tables and files).
"""

from bevdeploy.data.synthetic.camera import background_color, background_image
from bevdeploy.data.synthetic.rig import CAMERAS, LIDAR, CameraSpec, LidarSpec, camera
from bevdeploy.data.synthetic.world import SceneSim, build_world
from bevdeploy.data.synthetic.writer import write_world

__all__ = ["CAMERAS", "LIDAR", "CameraSpec", "LidarSpec", "SceneSim", "background_color",
           "background_image", "build_world", "camera", "write_world"]
