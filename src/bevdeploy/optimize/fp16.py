"""FP16 variants of the dense modules, for GPU backends (TensorRT, CUDA EP).

The conversion is ONNX Runtime's float16 converter (``onnxruntime.transformers.float16``, the
maintained copy of onnxconverter-common's): initializers and compute become float16 while the
graph inputs and outputs stay float32 (``keep_io_types``), so the runtime binds the module
exactly as before and the manifest's I/O specs remain true. Casts are inserted at the borders.

Ops are held in FP32 where half precision is known to break the head
(docs/reference.md#quantisation-recipe, #numerics-guardrails): LayerNormalization (its variance
overflows FP16, NVIDIA's LayerNorm plugin exists for this), Softmax (attention logits), TopK
(proposal selection: FP16 rounding creates ties that reorder proposals) and Sigmoid (scores compared
against a threshold). On a CPU without native FP16 arithmetic ONNX Runtime computes most FP16 ops by
converting back to FP32, so the variant is usually slower there; ``bevdeploy bench`` measures it.
"""

from __future__ import annotations

import onnx
import onnxslim.third_party.onnx_graphsurgeon as gs
from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

FP32_OPS: tuple[str, ...] = ("LayerNormalization", "Softmax", "TopK", "Sigmoid")


def to_fp16(model: onnx.ModelProto, *, fp32_ops: tuple[str, ...] = FP32_OPS
            ) -> onnx.ModelProto:
    """A float16 copy of ``model`` with float32 I/O and ``fp32_ops`` kept in float32."""
    copy = onnx.ModelProto.FromString(model.SerializeToString())
    blocked = sorted(set(DEFAULT_OP_BLOCK_LIST) | set(fp32_ops))
    converted = convert_float_to_float16(copy, keep_io_types=True, op_block_list=blocked)
    # The converter appends its input casts after the nodes that read them; ONNX requires
    # topological order (ONNX Runtime re-sorts, TensorRT's parser and the checker do not).
    graph = gs.import_onnx(converted)
    graph.toposort()
    result = gs.export_onnx(graph)
    onnx.checker.check_model(result)
    return result


def fp32_nodes(model: onnx.ModelProto, fp32_ops: tuple[str, ...] = FP32_OPS) -> list[str]:
    """Names of the nodes the conversion holds in FP32 (recorded in the manifest)."""
    return [n.name for n in model.graph.node if n.op_type in fp32_ops]
