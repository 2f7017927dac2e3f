"""Every CUDA kernel compiles for an H100 (sm_90) down to the cubin, without a GPU.

The interpreter runs the kernels' source but not Triton's compiler, which rejects things the
interpreter accepts (type promotions, shapes, unsupported operations). So every kernel is
launched once on small CPU inputs at the GPU's block sizes, and each launch's argument types
and constants are compiled for sm_90 with Triton's own ptxas. The kernels that must round
like the CPU kernels (``exact``) must contain no fused multiply-add in their PTX.
Where a GPU is usable the ``cuda`` cases of ``test_parity`` compile and run them for real.
"""

from __future__ import annotations

import importlib
import re

import numpy as np
import pytest
import torch

from bevdeploy.presets import get_preset

pytest.importorskip("triton", reason="triton is not installed (the gpu extra)")
from triton.backends.compiler import GPUTarget  # noqa: E402

from bevdeploy.runtime.kernels import cuda  # noqa: E402
from bevdeploy.runtime.kernels.cuda import _launch  # noqa: E402

# the package's names are the kernel functions, which shadow the modules of the same name
MODULES = [importlib.import_module(f"bevdeploy.runtime.kernels.cuda.{name}")
           for name in ("bevpool", "depth", "geometry", "normalize", "voxelize")]

H100 = GPUTarget("cuda", 90, 32)
FMA = re.compile(r"\bfma\.")


@pytest.mark.skipif(torch.cuda.is_available(),
                    reason="a GPU is usable: the cuda cases of test_parity compile for it")
def test_every_kernel_compiles_for_sm90_with_the_types_it_is_launched_with(monkeypatch):
    launches = []
    original = _launch.Kernel.__getitem__

    def recording(kernel, grid):
        run = original(kernel, grid)

        def launch(*args, **constexprs):
            launches.append((kernel, args, constexprs))
            run(*args, **constexprs)
        return launch

    monkeypatch.setattr(_launch.Kernel, "__getitem__", recording)
    monkeypatch.setattr(_launch, "INTERPRETER_WIDENING", 1)  # the GPU's block sizes

    tiny = get_preset("tiny")
    rng = np.random.default_rng(0)
    points = torch.from_numpy(rng.uniform(-50, 50, size=(300, 5)).astype(np.float32))
    cuda.voxelize(points, tiny.voxel.voxel_size, tiny.points.point_cloud_range[:3],
                  tiny.grid_size, tiny.voxel.max_points, 100)
    eye = np.tile(np.eye(4), (2, 1, 1))
    intrinsics = np.tile(np.array([[50.0, 0, 32], [0, 50.0, 16], [0, 0, 1]]), (2, 1, 1))
    cuda.depth_map(points, eye, eye, (32, 64))
    plan = cuda.geometry(eye, intrinsics, eye, np.eye(4), (32, 64), (4, 8), (1.0, 9.0, 2.0),
                         (-8.0, 8.0, 1.0), (-8.0, 8.0, 1.0), (-4.0, 4.0, 8.0), device="cpu")
    for dtype, accumulate in ((torch.float32, torch.float32), (torch.float16, torch.float16)):
        cuda.bev_pool(torch.rand(2, 4, 4, 8).to(dtype), torch.rand(2, 4, 8, 80).to(dtype), plan,
                      accumulate=accumulate)
    images = torch.from_numpy(rng.integers(0, 256, size=(2, 40, 60, 3), dtype=np.uint8))
    cuda.normalize(images, 0.5, (20, 30), (2, 3), (16, 24), (120, 110, 100), (60, 55, 57))

    kernels = {value for module in MODULES for value in vars(module).values()
               if isinstance(value, _launch.Kernel)}
    assert len(kernels) == 8
    assert {kernel for kernel, _, _ in launches} == kernels  # every kernel was launched
    for kernel, args, constexprs in launches:
        built = kernel.compile_for(H100, *args, **constexprs)
        assert built.asm["cubin"], kernel.name
        if kernel.exact:
            assert not FMA.search(built.asm["ptx"]), f"{kernel.name} contracts into FMA"
