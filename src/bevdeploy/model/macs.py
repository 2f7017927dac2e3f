"""Multiply-accumulate and parameter counts per top-level module, measured on a real forward.

Dense work (convolutions, linear layers, attention matmuls) is counted by PyTorch's own
``torch.utils.flop_counter.FlopCounterMode`` (MACs = FLOPs / 2) and attributed to the top-level
module running at the time. Two kinds of work it cannot see correctly are counted here:

* **sparse convolutions**: the MACs are ``pairs × C_in × C_out``, where ``pairs`` is the number
  of (active input, active output) site pairs over all kernel offsets, counted from the input
  and output coordinates of each spconv layer (the same on every device; spconv's CPU path
  happens to use ``aten.mm``, whose FLOPs are replaced by this count);
* **bev_pool**: one multiply-add per lifted frustum point that lands in the BEV grid and per
  channel (depth weight × feature, summed into its cell).

Normalization, activations, softmax and voxelization are data movement or element-wise work
and are not counted (BN folds into the convolutions when deployed).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from rich.console import RenderableType
from rich.table import Table
from spconv.pytorch.conv import SparseConvolution
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from bevdeploy.data.frame import Calibration, Frame, GroundTruth
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.inputs import collate
from bevdeploy.presets import Preset


@dataclass
class ModuleCost:
    """One row of the model-info table."""

    name: str  # dotted state-dict prefix, e.g. "encoders.camera.backbone"
    params: int  # learnable parameters
    state_keys: int  # entries in the state dict (parameters, buffers, geometry constants)
    macs: int
    detail: str = ""


# --------------------------------------------------------------------------------------------
# Sparse convolution pairs
# --------------------------------------------------------------------------------------------


def _site_keys(indices: Tensor, shape: Sequence[int]) -> Tensor:
    """(M, 4) int ``(b, x, y, z)`` → unique int64 linear keys."""
    idx = indices.long()
    x, y, z = (int(s) for s in shape)
    return ((idx[:, 0] * x + idx[:, 1]) * y + idx[:, 2]) * z + idx[:, 3]


def count_sparse_pairs(in_indices: Tensor, out_indices: Tensor, in_shape: Sequence[int],
                       kernel_size: Sequence[int], stride: Sequence[int],
                       padding: Sequence[int], dilation: Sequence[int]) -> int:
    """Number of (input site, output site, kernel offset) triples a sparse conv multiplies.

    Output site ``o`` reads input ``o·s − p + k·d`` for every kernel offset ``k``
    (cross-correlation, docs/reference.md#sparse-encoder); a pair exists when that input lies inside
    the grid and is active. Works for submanifold convs (output sites = input sites) and strided
    ones alike.
    """
    if in_indices.shape[0] == 0 or out_indices.shape[0] == 0:
        return 0
    device = in_indices.device
    shape = torch.tensor([int(s) for s in in_shape], device=device)
    active = torch.sort(_site_keys(in_indices, in_shape)).values
    out = out_indices.long()
    out = out[torch.argsort(_site_keys(out, in_shape))]  # sorted queries search faster
    batch = out[:, 0]
    base = out[:, 1:] * torch.tensor(stride, device=device) - torch.tensor(padding, device=device)
    offsets = torch.cartesian_prod(*[torch.arange(k, device=device) for k in kernel_size])
    offsets = offsets.reshape(-1, 3) * torch.tensor(dilation, device=device)
    pairs = 0
    for offset in offsets:  # one pass per kernel offset keeps memory at O(sites)
        site = base + offset
        inside = ((site >= 0) & (site < shape)).all(dim=1)
        keys = ((batch * shape[0] + site[:, 0]) * shape[1] + site[:, 1]) * shape[2] + site[:, 2]
        pos = torch.searchsorted(active, keys).clamp_(max=active.numel() - 1)
        pairs += int(((active[pos] == keys) & inside).sum())
    return pairs


# --------------------------------------------------------------------------------------------
# Counting
# --------------------------------------------------------------------------------------------


def top_level_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """The first non-``ModuleDict`` module along every path: for BEVFusion the nine modules of
    docs/reference.md#checkpoint-layout (``encoders.camera.backbone`` … ``heads.object``), in
    registration order."""
    found: list[tuple[str, nn.Module]] = []

    def walk(prefix: str, module: nn.Module) -> None:
        for name, child in module.named_children():
            full = f"{prefix}{name}"
            if isinstance(child, nn.ModuleDict):
                walk(f"{full}.", child)
            else:
                found.append((full, child))

    walk("", model)
    return found


class _Tally:
    """Accumulates MACs per group while the FlopCounterMode is active."""

    def __init__(self, counter: FlopCounterMode) -> None:
        self.counter = counter
        self.dense_flops: dict[str, int] = {}
        self.extra_macs: dict[str, int] = {}
        self.details: dict[str, list[str]] = {}
        self.sparse_calls: list[tuple[str, SparseConvolution, Tensor, Tensor,
                                      tuple[int, ...]]] = []
        self._start: dict[int, int] = {}

    def flops(self) -> int:
        return int(self.counter.get_total_flops())

    def begin(self, key: Any) -> None:
        self._start[id(key)] = self.flops()

    def end(self, key: Any) -> int:
        """FLOPs seen since ``begin(key)``."""
        return self.flops() - self._start.pop(id(key))

    def add(self, group: str, *, dense_flops: int = 0, macs: int = 0) -> None:
        self.dense_flops[group] = self.dense_flops.get(group, 0) + dense_flops
        self.extra_macs[group] = self.extra_macs.get(group, 0) + macs


@contextmanager
def _instrument(model: nn.Module, tally: _Tally) -> Iterator[None]:
    """Hooks that attribute counted FLOPs to top-level modules and replace the counts of
    sparse convs and ``bev_pool`` with exact MAC counts."""
    handles: list[Any] = []
    patched: list[nn.Module] = []
    for group, module in top_level_modules(model):
        def pre(mod: nn.Module, args: Any) -> None:
            tally.begin(mod)

        def post(mod: nn.Module, args: Any, out: Any, group: str = group) -> None:
            tally.add(group, dense_flops=tally.end(mod))

        handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

        for sub in module.modules():
            if isinstance(sub, SparseConvolution):
                handles += _hook_sparse(sub, group, tally)
        if hasattr(module, "bev_pool") and callable(module.bev_pool):
            module.bev_pool = _counting_bev_pool(module, group, tally)  # instance shadowing
            patched.append(module)
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
        for module in patched:
            del module.bev_pool


def _hook_sparse(conv: SparseConvolution, group: str, tally: _Tally) -> list[Any]:
    """Record each call's input/output sites; pairs are counted after the forward, outside
    the FlopCounterMode (whose per-op dispatch would slow the counting tenfold)."""
    def pre(mod: nn.Module, args: Any) -> None:
        tally.begin(mod)

    def post(mod: nn.Module, args: Any, out: Any) -> None:
        seen = tally.end(mod)  # spconv's own aten.mm FLOPs (CPU), replaced by the pair count
        tally.add(group, dense_flops=-seen)
        tally.sparse_calls.append((group, mod, args[0].indices, out.indices,
                                   tuple(args[0].spatial_shape)))

    return [conv.register_forward_pre_hook(pre), conv.register_forward_hook(post)]


def _counting_bev_pool(vtransform: nn.Module, group: str, tally: _Tally) -> Any:
    """``vtransform.bev_pool`` wrapped to count one MAC per kept frustum point and channel; a
    point is kept by the same rule as the reference (truncated cell index inside ``nx``)."""
    original = type(vtransform).bev_pool

    def bev_pool(geom: Tensor, depth_weights: Tensor, feats: Tensor) -> Tensor:
        tally.begin(bev_pool)
        out = original(vtransform, geom, depth_weights, feats)
        seen = tally.end(bev_pool)
        idx = ((geom - (vtransform.bx - vtransform.dx / 2.0)) / vtransform.dx).long()
        kept = ((idx >= 0) & (idx < vtransform.nx)).all(dim=-1).sum().item()
        macs = int(kept) * int(feats.shape[2])
        tally.add(group, dense_flops=-seen, macs=macs)
        tally.details.setdefault(group, []).append(f"bev_pool {macs / 1e9:.3f} G "
                                                   f"({kept / geom[..., 0].numel():.0%} kept)")
        return out

    return bev_pool


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any,
                out_shape: Any = None, **kwargs: Any) -> int:
    """PyTorch's attention formula (QKᵀ and AV), for an op it has no entry for."""
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# PyTorch registers FLOP formulas for the CUDA attention kernels only; on the CPU
# ``scaled_dot_product_attention`` lands in this op, which would otherwise count as zero.
_CPU_SDPA = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
_EXTRA_FORMULAS = {_CPU_SDPA: _sdpa_flops} if _CPU_SDPA is not None else {}


def count_macs(model: nn.Module, batch: Any) -> list[ModuleCost]:
    """Run ``model(batch)`` once (eval, no grad) and count MACs per top-level module.

    ``batch`` is whatever the model's forward takes (a ``ModelBatch`` for ``BEVFusion``).
    """
    was_training = model.training
    model.eval()
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    tally = _Tally(counter)
    try:
        with torch.no_grad(), _instrument(model, tally), counter:
            model(batch)
    finally:
        model.train(was_training)
    pair_totals: dict[str, list[int]] = {}
    for group, conv, in_sites, out_sites, in_shape in tally.sparse_calls:
        pairs = count_sparse_pairs(in_sites, out_sites, in_shape, conv.kernel_size, conv.stride,
                                   conv.padding, conv.dilation)
        tally.add(group, macs=pairs * conv.in_channels * conv.out_channels)
        layers_pairs = pair_totals.setdefault(group, [0, 0])
        layers_pairs[0] += 1
        layers_pairs[1] += pairs
    for group, (layers, pairs) in pair_totals.items():
        tally.details.setdefault(group, []).append(
            f"{layers} sparse convs, {pairs / 1e6:.2f} M site pairs")
    rows = []
    for group, module in top_level_modules(model):
        macs = tally.dense_flops.get(group, 0) // 2 + tally.extra_macs.get(group, 0)
        rows.append(ModuleCost(
            name=group,
            params=sum(p.numel() for p in module.parameters() if p.requires_grad),
            state_keys=len(module.state_dict()),
            macs=macs,
            detail="; ".join(tally.details.get(group, [])),
        ))
    return rows


def count_dense_macs(model: nn.Module, batch: Any,
                     groups: Mapping[str, Sequence[str]]) -> dict[str, int]:
    """Dense MACs per named group of submodules (dotted paths into ``model``), counted on one
    ``model(batch)`` forward like ``count_macs``. For groupings that cut across the top-level
    modules, e.g. a deploy package's ONNX graphs (``camera.backbone`` holds the image backbone,
    the neck and the vtransform's depth network). Paths must be distinct and not nested."""
    counter = FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS)
    tally = _Tally(counter)
    handles: list[Any] = []
    for group, paths in groups.items():
        for path in paths:
            def pre(mod: nn.Module, args: Any) -> None:
                tally.begin(mod)

            def post(mod: nn.Module, args: Any, out: Any, group: str = group) -> None:
                tally.add(group, dense_flops=tally.end(mod))

            module = model.get_submodule(path)
            handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), counter:
            model(batch)
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {group: tally.dense_flops.get(group, 0) // 2 for group in groups}


# --------------------------------------------------------------------------------------------
# A probe frame and the public entry point
# --------------------------------------------------------------------------------------------

_PROBE_SIZES = {  # (l, w, h) in metres, typical nuScenes sizes
    "car": (4.6, 1.9, 1.7), "truck": (7.0, 2.5, 3.0), "bus": (11.0, 2.9, 3.5),
    "pedestrian": (0.7, 0.7, 1.8), "bicycle": (1.8, 0.6, 1.3), "traffic_cone": (0.4, 0.4, 1.0),
}
_LIDAR_HEIGHT = 1.84  # metres above ground (nuScenes LIDAR_TOP)


def _probe_rig(preset: Preset) -> Calibration:
    """N cameras evenly spaced in azimuth from the front (+y), nuScenes-like focal length."""
    cams = preset.cameras
    h, w = cams.raw_size
    n = cams.num_cameras
    c2l = np.tile(np.eye(4), (n, 1, 1))
    for i in range(n):
        phi = math.pi / 2 - 2 * math.pi * i / n
        right = (math.sin(phi), -math.cos(phi), 0.0)
        c2l[i, :3, :3] = np.stack([right, (0.0, 0.0, -1.0), (math.cos(phi), math.sin(phi), 0.0)],
                                  axis=1)
        c2l[i, :3, 3] = (0.0, 0.0, -0.3)
    k = np.array([[0.7875 * w, 0, w / 2], [0, 0.7875 * w, h / 2], [0, 0, 1]])
    return Calibration(camera_names=cams.names, intrinsics=np.repeat(k[None], n, axis=0),
                       camera2lidar=c2l)


def _ray_box_hits(origin: np.ndarray, dirs: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Distance along each ray to the nearest box face (inf when it misses), slab method."""
    best = np.full(len(dirs), np.inf)
    for box in boxes:
        c, s = math.cos(box[6]), math.sin(box[6])
        rot = np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]])  # world → box frame
        o = rot @ (origin - box[:3])
        d = dirs @ rot.T
        half = box[3:6] / 2
        with np.errstate(divide="ignore", invalid="ignore"):
            t1, t2 = (-half - o) / d, (half - o) / d
        t_near = np.nanmax(np.minimum(t1, t2), axis=1)
        t_far = np.nanmin(np.maximum(t1, t2), axis=1)
        hit = (t_far >= t_near) & (t_near > 0)
        best = np.where(hit & (t_near < best), t_near, best)
    return best


def probe_frame(preset: Preset, seed: int = 0, num_objects: int = 12) -> Frame:
    """A deterministic LiDAR- and camera-like frame for counting and smoke tests.

    A 32-beam spinning LiDAR (elevations −30.67°…+10.67°, 1084 azimuth steps) is ray-cast
    against the ground and ``num_objects`` boxes for the key sweep and ``preset.points.sweeps``
    earlier sweeps (ego moving at 5 m/s, 20 Hz); images are smooth gradients with random
    blocks and noise. It is not a substitute for real data, but its point count and sparsity
    are of the real order, which is what the sparse-conv and bev_pool counts depend on.
    """
    rng = np.random.default_rng(seed)
    names = [c for c in _PROBE_SIZES if c in preset.classes] or [preset.classes[0]]
    labels = rng.choice(names, size=num_objects)
    boxes = np.zeros((num_objects, 9))
    radius, angle = rng.uniform(6, 35, num_objects), rng.uniform(-math.pi, math.pi, num_objects)
    for i, name in enumerate(labels):
        l, w, h = _PROBE_SIZES.get(str(name), (4.0, 2.0, 1.6))
        boxes[i] = (radius[i] * math.cos(angle[i]), radius[i] * math.sin(angle[i]),
                    -_LIDAR_HEIGHT + h / 2, l, w, h, rng.uniform(-math.pi, math.pi), 0, 0)

    elevation = np.deg2rad(np.linspace(-30.67, 10.67, 32))
    azimuth = np.linspace(-math.pi, math.pi, 1084, endpoint=False)
    el, az = np.meshgrid(elevation, azimuth, indexing="ij")
    dirs = np.stack([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)], -1)
    dirs = dirs.reshape(-1, 3)
    clouds = []
    for sweep in range(preset.points.sweeps + 1):
        lag = 0.05 * sweep
        origin = np.array([0.0, -5.0 * lag, 0.0])
        with np.errstate(divide="ignore"):
            t_ground = np.where(dirs[:, 2] < 0, -_LIDAR_HEIGHT / dirs[:, 2], np.inf)
        t_box = _ray_box_hits(origin, dirs, boxes)
        t = np.minimum(t_ground, t_box)
        keep = np.isfinite(t) & (t < 80.0)
        t = t[keep] + rng.normal(0, 0.02, keep.sum())
        xyz = origin + dirs[keep] * t[:, None]
        intensity = np.where(t_box[keep] <= t_ground[keep], rng.uniform(40, 200, keep.sum()),
                             rng.uniform(2, 20, keep.sum()))
        cloud = np.column_stack([xyz, intensity, np.full(keep.sum(), lag)])
        clouds.append(cloud[:, :preset.points.num_features])
    points = np.concatenate(clouds).astype(np.float32)

    h, w = preset.cameras.raw_size
    images = np.empty((preset.cameras.num_cameras, h, w, 3), dtype=np.uint8)
    rows = np.linspace(0, 1, h, dtype=np.float32)[:, None, None]
    cols = np.linspace(0, 1, w, dtype=np.float32)[None, :, None]
    for i in range(len(images)):
        img = rng.uniform(40, 200, 3).astype(np.float32) * (0.5 + 0.5 * rows) + 40 * cols
        for _ in range(8):
            top, left = rng.integers(0, h - 20), rng.integers(0, w - 20)
            img[top:top + rng.integers(20, h // 3), left:left + rng.integers(20, w // 4)] = \
                rng.uniform(0, 255, 3)
        img += 6 * rng.standard_normal(img.shape, dtype=np.float32)
        images[i] = np.clip(img, 0, 255).astype(np.uint8)

    gt = GroundTruth(boxes=boxes.astype(np.float32), names=labels.astype(object),
                     num_lidar_pts=np.zeros(num_objects, dtype=np.int64))
    return Frame(images=images, points=points, calib=_probe_rig(preset), token=f"probe-{seed}",
                 gt=gt, source=f"probe_frame(seed={seed})")


def model_info(preset: Preset, frame: Frame | None = None) -> list[ModuleCost]:
    """Build the preset's model (random weights: counts do not depend on them) and count
    parameters and MACs per top-level module on ``frame`` (default: ``probe_frame``)."""
    model = BEVFusion(preset)
    frame = frame if frame is not None else probe_frame(preset)
    return count_macs(model, collate([frame], preset))


def model_info_table(rows: Sequence[ModuleCost], title: str = "model info") -> Table:
    """A rich table of ``rows`` with a total line (params in M, MACs in G)."""
    table = Table(title=title)
    table.add_column("module", no_wrap=True)
    table.add_column("params (M)", justify="right")
    table.add_column("state keys", justify="right")
    table.add_column("MACs (G)", justify="right")
    table.add_column("detail")
    for row in rows:
        table.add_row(row.name, f"{row.params / 1e6:.3f}", str(row.state_keys),
                      f"{row.macs / 1e9:.3f}", row.detail)
    table.add_section()
    table.add_row("total", f"{sum(r.params for r in rows) / 1e6:.3f}",
                  str(sum(r.state_keys for r in rows)), f"{sum(r.macs for r in rows) / 1e9:.3f}",
                  "")
    return table


def narrow_model_info_table(rows: Sequence[ModuleCost], title: str = "model info"
                            ) -> RenderableType:
    """``model_info_table`` for an 80-column terminal: short headers (M params, G MACs), each
    detail a numbered note below the table."""
    from bevdeploy.tables import Footnotes, compact_table, with_notes

    table = compact_table(title)
    table.add_column("module", no_wrap=True)
    for col in ("params M", "keys", "GMAC"):
        table.add_column(col, justify="right", no_wrap=True)
    table.add_column("note", no_wrap=True)
    notes = Footnotes()
    for row in rows:
        table.add_row(row.name, f"{row.params / 1e6:.3f}", str(row.state_keys),
                      f"{row.macs / 1e9:.3f}", notes.ref(row.detail))
    table.add_section()
    table.add_row("total", f"{sum(r.params for r in rows) / 1e6:.3f}",
                  str(sum(r.state_keys for r in rows)), f"{sum(r.macs for r in rows) / 1e9:.3f}",
                  "")
    return with_notes(table, notes)


def model_info_json(rows: Sequence[ModuleCost], preset: str) -> str:
    """The rows as JSON (exact counts, not the table's rounded M and G), with their totals."""
    import json
    from dataclasses import asdict

    return json.dumps({"preset": preset, "modules": [asdict(r) for r in rows],
                       "total": {"params": sum(r.params for r in rows),
                                 "state_keys": sum(r.state_keys for r in rows),
                                 "macs": sum(r.macs for r in rows)}}, indent=1) + "\n"
