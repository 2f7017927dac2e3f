"""``bevdeploy bench``: per-stage and end-to-end latency, throughput and peak memory of deploy
packages and of the PyTorch eager reference, measured in one run on the same frames.

**Variants.** Every ``--package`` × CPU ``--backend`` × ``--schedule`` is one variant, and
every ``--package`` × GPU backend (torch-cuda, tensorrt) × ``--gpu-config`` (``GpuConfig``:
precision, channels-last, CUDA graphs, two streams; ``--gpu-ladder`` adds one switch per step)
is one: a GPU backend runs under ``CudaSchedule``, so the CPU schedules do not multiply it.
Unless ``--no-reference``, the PyTorch eager reference of each distinct preset is one more (the
package's preset, its checkpoint when known, else the exporter's seeded random initialisation —
latency does not depend on the weights' values). Every variant uses the same thread budget:
the pipeline's ``threads`` for a package, ``torch.set_num_threads`` for the reference. GPU
variants are refused before anything is measured where CUDA is unusable.

**How it is measured.** Each variant runs in its own fresh process (``spawn``), one after the
other: load the frames, note the resident memory, load the variant, run ``warmup`` frames, then
time ``frames`` frames as one stream. Per-frame stage times come from the pipeline's own timers
(and, for the reference, from forward hooks on the modules that do the same work); frames/s is
the frame count over the stream's wall time. Peak memory is the process's resident-set
high-water mark kept by the kernel (``VmHWM``; exact, not sampled), reported whole and as the
growth over the resident set measured after the frames were loaded and before the variant's
libraries were imported: one process per variant is what makes this per-variant and honest
(PyTorch's own footprint counts against the reference, nothing of one variant against another).

**Frames.** A nuScenes-format dataset (``--data``), or by default a small synthetic world
generated once into the user cache directory; frames cycle when fewer exist than asked for,
and the timed frames start after the warm-up ones, so consecutive frames always differ (the
geometry cache cannot hit by accident). Reading and decoding the files is not timed.

**Dense modules.** Each ONNX module's MACs are counted on the reference model
(``bevdeploy.model.macs.count_dense_macs``, the modules each graph holds) and turned into
achieved GFLOP/s (2 FLOPs per MAC) next to this machine's measured float32 GEMM rate
(``bench.kernels.measure_rates``: ``np.matmul`` at 1024³ and 2048³ with the same thread
budget, best of all sizes and repeats, measured before and after the variants).

**Layout.** ``variants`` plans and checks the columns, ``frames`` provides the frames,
``runner`` measures each variant in its own process (``run_bench``), ``measure`` holds the
statistics and memory helpers, ``report`` the results and their tables. The kernel
micro-benchmarks (``bevdeploy bench-kernels``) sit beside them: ``kernels`` (CPU kernels, and the
machine's copy and GEMM rates), ``kernels_cuda`` (their Triton twins) and ``scn`` (the sparse
convolution executor); ``reference_device`` moves the eager reference onto a GPU.
"""

from bevdeploy.bench.frames import FrameSource, default_world, load_frames
from bevdeploy.bench.measure import ISA_FEATURES, Stat, cpu_identity
from bevdeploy.bench.report import BenchReport, VariantResult
from bevdeploy.bench.runner import measure_in_subprocess, measure_variant, run_bench
from bevdeploy.bench.variants import Variant, check_devices, package_precision, plan_variants
from bevdeploy.vocabulary import DENSE_MODULES

__all__ = [
    "DENSE_MODULES", "ISA_FEATURES", "BenchReport", "FrameSource", "Stat", "Variant",
    "VariantResult", "check_devices", "cpu_identity", "default_world", "load_frames",
    "measure_in_subprocess", "measure_variant", "package_precision", "plan_variants", "run_bench",
]
