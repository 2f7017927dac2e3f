"""DepthLSSTransform: camera features + LiDAR depth → camera BEV
(docs/reference.md#depthlsstransform).

This is the one-channel-depth version of mit-han-lab/bevfusion at commit ``db75150``, the one
the released checkpoints and CUDA-BEVFusion use. The forward is split into the steps the deploy
path runs separately, so each can be checked on its own against its kernel:

1. :meth:`~DepthLSSTransform.depth_map` — project every LiDAR point into every camera (sparse
   depth image, docs/reference.md#sparse-depth-image);
2. :meth:`~DepthLSSTransform.depth_and_features` — ``dtransform`` + ``depthnet``: softmaxed
   depth weights and context features (#depth-encoder-and-depthnet, #lift);
3. :meth:`~DepthLSSTransform.get_geometry` — the LiDAR-frame position of every frustum point
   (#frustum, #camera-geometry), which depends on the calibration only;
4. :meth:`~DepthLSSTransform.bev_pool` — lift (depth weight × feature) and sum into BEV cells
   (#bev-pooling);
5. ``downsample`` — three 3×3 convs, the middle one strided (#bev-downsample).

The reference quirks are kept on purpose (docs/reference.md#reference-quirks): the frustum uses
``linspace(0, W−1, fW)`` and lower-edge depths, the stored depth is the *clamped* camera z, BEV
indices truncate toward zero, and pooling is a sum.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from bevdeploy.errors import InputError
from bevdeploy.presets import Preset

_SOURCE = "<DepthLSSTransform>"


def _conv_bn_relu(cin: int, cout: int, kernel: int, stride: int = 1, bias: bool = True
                  ) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=bias),
            nn.BatchNorm2d(cout), nn.ReLU(inplace=True)]


def _check_shape(t: torch.Tensor, expected: Sequence[int | None], fld: str) -> None:
    """Raise InputError unless ``t`` has ``expected`` shape (``None`` matches any size)."""
    ok = t.dim() == len(expected) and all(e is None or e == s for e, s in zip(expected, t.shape))
    if not ok:
        want = "(" + ", ".join("*" if e is None else str(e) for e in expected) + ")"
        raise InputError(f"expected shape {want}, got {tuple(t.shape)}", path=_SOURCE, field=fld)


class DepthLSSTransform(nn.Module):
    """Lift-splat view transform with a LiDAR depth prior.

    Parameters ``frustum`` (D, fH, fW, 3), ``dx``, ``bx`` (3,) and ``nx`` (3,) int64 are
    ``nn.Parameter(requires_grad=False)`` because the checkpoint stores them that way.
    """

    def __init__(self, in_channels: int, out_channels: int, image_size: tuple[int, int],
                 feature_size: tuple[int, int], xbound: Sequence[float], ybound: Sequence[float],
                 zbound: Sequence[float], dbound: Sequence[float], depth_bins: int,
                 bev_size: tuple[int, int, int], downsample: int = 2,
                 dtransform_channels: Sequence[int] = (8, 32, 64), depthnet_channels: int = 256
                 ) -> None:
        super().__init__()
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.image_size = tuple(image_size)
        self.feature_size = tuple(feature_size)
        self.depth_bins = depth_bins
        bounds = (xbound, ybound, zbound)
        self.dx = nn.Parameter(torch.tensor([b[2] for b in bounds], dtype=torch.float32),
                               requires_grad=False)
        self.bx = nn.Parameter(torch.tensor([b[0] + b[2] / 2.0 for b in bounds],
                                            dtype=torch.float32), requires_grad=False)
        self.nx = nn.Parameter(torch.tensor(bev_size, dtype=torch.int64), requires_grad=False)
        self.frustum = nn.Parameter(self._frustum(dbound), requires_grad=False)

        # dtransform brings the full-resolution depth image to the feature stride: a 1×1 conv,
        # then two 5×5 convs whose strides multiply to it (4 × 2 = 8 in the reference).
        stride = self.image_size[0] // self.feature_size[0]
        c1, c2, c3 = dtransform_channels
        self.dtransform = nn.Sequential(*_conv_bn_relu(1, c1, 1),
                                        *_conv_bn_relu(c1, c2, 5, stride // 2),
                                        *_conv_bn_relu(c2, c3, 5, 2))
        self.depthnet = nn.Sequential(*_conv_bn_relu(c3 + in_channels, depthnet_channels, 3),
                                      *_conv_bn_relu(depthnet_channels, depthnet_channels, 3),
                                      nn.Conv2d(depthnet_channels, depth_bins + out_channels, 1))
        bev_channels = out_channels * bev_size[2]
        if downsample == 1:
            self.downsample: nn.Module = nn.Identity()
        else:
            self.downsample = nn.Sequential(
                *_conv_bn_relu(bev_channels, out_channels, 3, bias=False),
                *_conv_bn_relu(out_channels, out_channels, 3, downsample, bias=False),
                *_conv_bn_relu(out_channels, out_channels, 3, bias=False))

    def _frustum(self, dbound: Sequence[float]) -> torch.Tensor:
        """(D, fH, fW, 3) of (x_img, y_img, depth): feature cells placed on
        ``linspace(0, size − 1, n)`` of the network image (not pixel centres), depths at the
        lower edge of each bin."""
        (ih, iw), (fh, fw), d = self.image_size, self.feature_size, self.depth_bins
        ds = dbound[0] + dbound[2] * torch.arange(d, dtype=torch.float32)
        xs = torch.linspace(0, iw - 1, fw, dtype=torch.float32)
        ys = torch.linspace(0, ih - 1, fh, dtype=torch.float32)
        return torch.stack([xs.view(1, 1, fw).expand(d, fh, fw),
                            ys.view(1, fh, 1).expand(d, fh, fw),
                            ds.view(d, 1, 1).expand(d, fh, fw)], dim=-1).contiguous()

    # ---- 1. sparse depth image -----------------------------------------------------------

    def depth_map(self, points: Sequence[torch.Tensor], lidar2image: torch.Tensor,
                  img_aug: torch.Tensor, lidar_aug: torch.Tensor) -> torch.Tensor:
        """(B, N, 1, H, W) metric camera depth at the pixels LiDAR points project to, else 0.

        Per sample b and camera n: undo the LiDAR augmentation, project with ``lidar2image``,
        clamp z to [1e-5, 1e5] (the stored depth is the clamped z, as the reference's aliasing
        makes it), divide, apply ``img_aug``, keep points with 0 ≤ u' < W and 0 ≤ v' < H
        (float test), write at (trunc v', trunc u'). Only xyz of the points is used.

        The projection runs in float64 whatever the inputs' dtype; the depths are returned in
        ``lidar2image``'s dtype. Which pixel a point lands on is a truncation: in float32 a point
        near a pixel edge flips to the neighbour depending on the operation order, and at an
        object's outline that moves a depth by tens of metres (seen: 37.6 m on one pixel of a
        synthetic frame, which failed ``compare``'s depth stage against the float64 deploy
        kernel). In float64 the reference and ``runtime.kernels.depth_map`` agree pixel for
        pixel.

        Ties: where several points hit one pixel, the one **latest in point order** wins. The
        reference leaves this to scatter write order (nondeterministic on GPU); fixing it makes
        the reference reproducible and gives the deploy kernels a rule to match.
        """
        b_count, n_cams = lidar2image.shape[:2]
        h, w = self.image_size
        depth = lidar2image.new_zeros(b_count, n_cams * h * w)
        l2i, i_aug, l_aug = (m.to(torch.float64) for m in (lidar2image, img_aug, lidar_aug))
        for b, pts in enumerate(points):
            lidar_m = l_aug[b, :3, :3]
            xyz = pts[:, :3].to(torch.float64) - l_aug[b, :3, 3]
            xyz = torch.inverse(lidar_m) @ xyz.T  # (3, P) in the un-augmented LiDAR frame
            cam = l2i[b, :, :3, :3] @ xyz + l2i[b, :, :3, 3:]  # (N, 3, P)
            z = cam[:, 2].clamp(1e-5, 1e5)
            pix = torch.cat([cam[:, :2] / z[:, None], z[:, None]], dim=1)
            pix = i_aug[b, :, :2, :3] @ pix + i_aug[b, :, :2, 3:]  # (N, 2, P): u', v'
            u, v = pix[:, 0], pix[:, 1]
            on_img = (u >= 0) & (u < w) & (v >= 0) & (v < h)
            cam_idx, pt_idx = on_img.nonzero(as_tuple=True)  # camera-major, then point order
            flat = (cam_idx * h + v[cam_idx, pt_idx].long()) * w + u[cam_idx, pt_idx].long()
            winner = torch.full((n_cams * h * w,), -1, dtype=torch.long, device=flat.device)
            winner.scatter_reduce_(0, flat, torch.arange(flat.numel(), device=flat.device),
                                   reduce="amax")
            hit = winner.ge(0).nonzero(as_tuple=True)[0]
            chosen = winner[hit]
            depth[b, hit] = z[cam_idx[chosen], pt_idx[chosen]].to(depth.dtype)
        return depth.view(b_count, n_cams, 1, h, w)

    # ---- 2. depth weights and context features ---------------------------------------------

    def depth_and_features(self, img_feat: torch.Tensor, depth: torch.Tensor
                           ) -> tuple[torch.Tensor, torch.Tensor]:
        """(BN, Cin, h, w) image features + (BN, 1, H, W) depth → depth weights (BN, D, h, w),
        softmaxed over D, and context features (BN, C, h, w).

        The encoded depth comes *first* in the concatenation fed to ``depthnet``.
        """
        x = self.depthnet(torch.cat([self.dtransform(depth), img_feat], dim=1))
        d = self.depth_bins
        return x[:, :d].softmax(dim=1), x[:, d:d + self.out_channels]

    # ---- 3. frustum geometry ---------------------------------------------------------------

    def get_geometry(self, camera2lidar: torch.Tensor, intrinsics: torch.Tensor,
                     img_aug: torch.Tensor, lidar_aug: torch.Tensor) -> torch.Tensor:
        """(B, N, D, fH, fW, 3) LiDAR-frame xyz of every frustum point.

        Undo the image augmentation, scale (u, v) by depth, apply ``R·K⁻¹`` and ``t`` of
        ``camera2lidar``, then the LiDAR augmentation. ``intrinsics`` holds K in its top-left
        3×3 block (4×4 matrices, as the reference passes them).
        """
        b, n = camera2lidar.shape[:2]
        view = (b, n, 1, 1, 1)
        pts = self.frustum - img_aug[..., :3, 3].reshape(*view, 3)
        pts = torch.inverse(img_aug[..., :3, :3]).reshape(*view, 3, 3) @ pts.unsqueeze(-1)
        pts = torch.cat([pts[..., :2, :] * pts[..., 2:3, :], pts[..., 2:3, :]], dim=-2)
        cam2lidar = camera2lidar[..., :3, :3] @ torch.inverse(intrinsics[..., :3, :3])
        pts = (cam2lidar.reshape(*view, 3, 3) @ pts).squeeze(-1)
        pts = pts + camera2lidar[..., :3, 3].reshape(*view, 3)
        pts = (lidar_aug[:, :3, :3].reshape(b, 1, 1, 1, 1, 3, 3) @ pts.unsqueeze(-1)).squeeze(-1)
        return pts + lidar_aug[:, :3, 3].reshape(b, 1, 1, 1, 1, 3)

    # ---- 4. BEV pooling ----------------------------------------------------------------------

    def bev_pool(self, geom: torch.Tensor, depth_weights: torch.Tensor, feats: torch.Tensor
                 ) -> torch.Tensor:
        """Sum ``depth_weights[b,n,d,h,w] · feats[b,n,:,h,w]`` into the BEV cell of
        ``geom[b,n,d,h,w]`` → (B, C·nz, nx, ny), dim 2 = x, channel = z·C + c.

        Cell index ``(geom − (bx − dx/2)) / dx`` is truncated toward zero (``.long()``), so
        coordinates up to one cell below the lower bound land in cell 0, as in the reference;
        points outside [0, n) on any axis are dropped. This is the plain-torch reference: it
        lifts one depth bin at a time (never the whole B·N·D·h·w·C frustum) and ``index_add_``s
        it; it equals the reference's sort-and-cumsum up to float summation order.
        """
        b, n, d = geom.shape[:3]
        c = feats.shape[2]
        nx, ny, nz = (int(v) for v in self.nx)
        idx = ((geom - (self.bx - self.dx / 2.0)) / self.dx).long()
        ix, iy, iz = idx.unbind(-1)
        kept = (ix >= 0) & (ix < nx) & (iy >= 0) & (iy < ny) & (iz >= 0) & (iz < nz)
        batch = torch.arange(b, device=geom.device).view(b, 1, 1, 1, 1)
        cell = ((batch * nz + iz) * nx + ix) * ny + iy  # (B, N, D, h, w)
        feats_last = feats.permute(0, 1, 3, 4, 2)  # (B, N, h, w, C)
        out = feats.new_zeros(b * nz * nx * ny, c)
        for k in range(d):
            keep = kept[:, :, k]
            lifted = depth_weights[:, :, k, ..., None] * feats_last
            out.index_add_(0, cell[:, :, k][keep], lifted[keep])
        return out.view(b, nz, nx, ny, c).permute(0, 1, 4, 2, 3).reshape(b, nz * c, nx, ny)

    # ---- full forward ----------------------------------------------------------------------

    def forward(self, img_feat: torch.Tensor, points: Sequence[torch.Tensor],
                camera2lidar: torch.Tensor, intrinsics: torch.Tensor, img_aug: torch.Tensor,
                lidar_aug: torch.Tensor, lidar2image: torch.Tensor,
                present: torch.Tensor | None = None) -> torch.Tensor:
        """(B, N, Cin, fH, fW) neck features + points + matrices → camera BEV (B, C, X', Y').
        A camera with ``present`` (B, N) False has no data (``Frame.dropped``): its depth
        weights are zeroed before pooling, so it adds exact zeros to every cell."""
        self._check_inputs(img_feat, points, camera2lidar, intrinsics, img_aug, lidar_aug,
                           lidar2image)
        b, n, _, h, w = img_feat.shape
        depth = self.depth_map(points, lidar2image, img_aug, lidar_aug)
        weights, feats = self.depth_and_features(img_feat.flatten(0, 1), depth.flatten(0, 1))
        geom = self.get_geometry(camera2lidar, intrinsics, img_aug, lidar_aug)
        bev = self.bev_pool(geom, absent_zeroed(weights.view(b, n, self.depth_bins, h, w),
                                                present),
                            feats.view(b, n, self.out_channels, h, w))
        return self.downsample(bev)

    def _check_inputs(self, img_feat: torch.Tensor, points: Sequence[torch.Tensor],
                      camera2lidar: torch.Tensor, intrinsics: torch.Tensor, img_aug: torch.Tensor,
                      lidar_aug: torch.Tensor, lidar2image: torch.Tensor) -> None:
        _check_shape(img_feat, (None, None, self.in_channels, *self.feature_size), "img_feat")
        b, n = img_feat.shape[:2]
        for name, mat in (("camera2lidar", camera2lidar), ("intrinsics", intrinsics),
                          ("img_aug", img_aug), ("lidar2image", lidar2image)):
            _check_shape(mat, (b, n, 4, 4), name)
        _check_shape(lidar_aug, (b, 4, 4), "lidar_aug")
        if len(points) != b:
            raise InputError(f"expected one point tensor per sample ({b}), got {len(points)}",
                             path=_SOURCE, field="points")
        for i, pts in enumerate(points):
            if pts.dim() != 2 or pts.shape[1] < 3:
                raise InputError(f"expected (P, F>=3), got {tuple(pts.shape)}", path=_SOURCE,
                                 field=f"points[{i}]")


def absent_zeroed(depth_weights: torch.Tensor, present: torch.Tensor | None) -> torch.Tensor:
    """(B, N, D, h, w) depth weights with those of the cameras ``present`` (B, N) marks False
    set to exactly zero (a masked copy; unchanged when every camera is present)."""
    if present is None:
        return depth_weights
    mask = present.to(device=depth_weights.device, dtype=torch.bool)
    return torch.where(mask[:, :, None, None, None], depth_weights,
                       torch.zeros((), dtype=depth_weights.dtype, device=depth_weights.device))


def build_vtransform(preset: Preset) -> DepthLSSTransform:
    """The view transform for ``preset``: neck width in, ``vtransform`` bounds and widths."""
    vt = preset.model.vtransform
    return DepthLSSTransform(
        in_channels=preset.model.neck.out_channels, out_channels=vt.out_channels,
        image_size=preset.cameras.image_size, feature_size=preset.feature_size,
        xbound=vt.xbound, ybound=vt.ybound, zbound=vt.zbound, dbound=vt.dbound,
        depth_bins=vt.depth_bins, bev_size=vt.bev_size, downsample=vt.downsample,
        dtransform_channels=vt.dtransform_channels, depthnet_channels=vt.depthnet_channels)
