"""Make spconv 2.3.8's backward pass usable, and correct, on a CPU-only PyTorch.

Two defects of spconv on the CPU stand between the reference model and CPU training:

1. ``spconv.pytorch.ops.indice_conv_backward`` asks for the current CUDA stream before it
   checks the device, which raises "Torch not compiled with CUDA enabled" on a CPU-only
   PyTorch although the CPU branch never uses the stream (traveller59/spconv#366 reports the
   same call in an older code path). Inside ``cpu_sparse_training`` the lookup answers 0 (the
   default stream) when CUDA is unavailable.
2. Its CPU ``scatter_add`` races between OpenMP threads (see
   ``bevdeploy.model.lidar.sparse_encoder.cpu_single_thread``), and the backward uses it too.
   The model only pins the forward to one thread, so training runs with one intra-op thread.
   On a small CPU this is also the faster choice (docs/bench/notes.md#cpu-training-threads).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import spconv.pytorch.ops as spconv_ops
import torch


def _default_stream() -> int:
    return 0


@contextmanager
def cpu_sparse_training() -> Iterator[None]:
    """One intra-op thread, and spconv's CUDA-stream lookup made harmless without CUDA;
    both restored on exit."""
    threads = torch.get_num_threads()
    original = spconv_ops.get_current_stream
    if not torch.cuda.is_available():
        spconv_ops.get_current_stream = _default_stream
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        spconv_ops.get_current_stream = original
