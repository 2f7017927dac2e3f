"""Sinks: where the results of a run go.

The frame loop hands every frame that finished to each sink (``write``) and, once the run has
ended however it ended, closes them with the run record (``close``), which is when a sink writes
its files — atomically, so that an output holds exactly the frames that finished and says
whether the run was complete. Each sink has one job:

==================  ===========================================================================
``DetectionsJson``  ``detections.json``: every frame's boxes (bevdeploy convention) + the run
``Submission``      ``results_nusc.json``: a nuScenes detection submission (global frame)
``Renders``         a bird's-eye view and a camera mosaic per frame (PNG)
``Metrics``         mAP/NDS through nuscenes-devkit: the submission and ``metrics.json``
``StageTimings``    each frame's stage times, summarised as medians
``FoxgloveScene``   ``infer --bag-out``: each frame's boxes as a ``foxglove.SceneUpdate`` in an
                    MCAP file, the input bag's messages copied beside them (``sinks.mcap``,
                    imported from there so protobuf loads only for it; streamed into a
                    temporary file as frames finish, renamed when closed)
==================  ===========================================================================
"""

from bevdeploy.sinks.base import RunRecord, Sink
from bevdeploy.sinks.detections import DetectionsJson, Submission
from bevdeploy.sinks.metrics import Metrics
from bevdeploy.sinks.render import Renders
from bevdeploy.sinks.timings import StageTimings

__all__ = ["DetectionsJson", "Metrics", "Renders", "RunRecord", "Sink", "StageTimings",
           "Submission"]
