"""The two dense camera graphs: ``camera.backbone.onnx`` and ``camera.vtransform.onnx``.

CUDA-BEVFusion's split (docs/reference.md#onnx-modules, #export-details, #outside-the-graphs):
everything per-pixel and learned before the lift goes into ``camera.backbone`` (image backbone, neck
level 0, depth encoder ``dtransform``, ``depthnet``, the depth softmax), and the graph stops there.
The LSS outer product depth × feature and the BEV pooling are a scatter-reduce over
calibration-dependent cell indices, done by the ``bevpool`` kernel without ever materialising the
N·D·h·w·C frustum; the graph only hands it the two factors. ``camera.vtransform`` is the downsample
stack that follows the pooling.
"""

from __future__ import annotations

from torch import Tensor, nn

from bevdeploy.export.onnx_utils import DenseGraph, float_spec
from bevdeploy.presets import Preset


class CameraBackboneGraph(nn.Module):
    """``img (1,N,3,H,W)``, ``depth (1,N,1,H,W)`` → ``camera_depth_weights (N,D,h,w)``
    (softmaxed over D) and ``camera_feature (N,h,w,C)``.

    The features leave channels-last (NHWC) because the bevpool kernel reads all C channels of
    one pixel per frustum point; the depth weights stay (N,D,h,w), which is the frustum's flat
    index order.
    """

    def __init__(self, camera: nn.ModuleDict) -> None:
        super().__init__()
        self.backbone = camera["backbone"]
        self.neck = camera["neck"]
        self.vtransform = camera["vtransform"]

    def forward(self, img: Tensor, depth: Tensor) -> tuple[Tensor, Tensor]:
        feat = self.neck(self.backbone(img.flatten(0, 1)))[0]
        weights, feats = self.vtransform.depth_and_features(feat, depth.flatten(0, 1))
        return weights, feats.permute(0, 2, 3, 1)


def camera_backbone_graph(model: nn.Module, preset: Preset) -> DenseGraph:
    """The ``camera.backbone`` graph of ``model`` (a ``BEVFusion``), shapes from ``preset``."""
    n = preset.cameras.num_cameras
    h_img, w_img = preset.cameras.image_size
    h, w = preset.feature_size
    vt = preset.model.vtransform
    return DenseGraph(
        name="camera.backbone",
        module=CameraBackboneGraph(model.encoders["camera"]),
        inputs=(float_spec("img", (1, n, 3, h_img, w_img)),
                float_spec("depth", (1, n, 1, h_img, w_img))),
        outputs=(float_spec("camera_depth_weights", (n, vt.depth_bins, h, w)),
                 float_spec("camera_feature", (n, h, w, vt.out_channels))),
    )


def camera_vtransform_graph(model: nn.Module, preset: Preset) -> DenseGraph:
    """The ``camera.vtransform`` graph: ``feat_in (1, C·nz, nx, ny)`` (the bevpool output) →
    ``feat_out (1, C, X, Y)``."""
    vt = preset.model.vtransform
    nx, ny, nz = vt.bev_size
    x, y = vt.out_bev_size
    return DenseGraph(
        name="camera.vtransform",
        module=model.encoders["camera"]["vtransform"].downsample,
        inputs=(float_spec("feat_in", (1, vt.out_channels * nz, nx, ny)),),
        outputs=(float_spec("feat_out", (1, vt.out_channels, x, y)),),
    )
