"""TensorRT engines for a deploy package's four dense modules, written into the package.

Each engine is built from the module's ONNX file exactly as exported (or as ``bevdeploy
optimize`` left it), serialized next to it as ``<module>.plan`` (CUDA-BEVFusion's name) and
recorded in the module's manifest entry (``EngineEntry``): TensorRT version, GPU name and
compute capability, builder flags, workspace, size and SHA-256. The ``tensorrt`` backend refuses
an engine whose record does not match the machine it runs on.

Precision. TensorRT 10 builds *weakly typed* networks: ``--precision fp16`` sets
``BuilderFlag.FP16`` on any package; ``--precision int8`` sets ``INT8`` (+ ``FP16``) on the
modules whose graphs are INT8 QDQ (``bevdeploy optimize --int8``: explicit quantization, so no
calibrator) and ``FP16`` on the modules the INT8 recipe keeps in float. TensorRT 11 removed
those flags: networks are strongly typed and the graph's own types decide, so there FP16 needs
an FP16 package. ``plan_flags`` holds that rule and is checked for every module before the
first (minutes-long) build starts.

Writes are atomic: in place, each engine file and then the manifest replace the old ones only
once complete; with ``out``, the package is copied to a staging directory that replaces ``out``
only when every engine is built. The SCN module is not built (TensorRT has no sparse conv).
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from bevdeploy.errors import ConfigError, PackageError
from bevdeploy.io import atomic_write, replace_dir, staging_dir
from bevdeploy.package import MANIFEST_NAME, EngineEntry, load_package
from bevdeploy.runtime.backends.gpu import GpuOptions, gpu_identity, import_torch, resolve_device
from bevdeploy.runtime.backends.tensorrt import import_tensorrt
from bevdeploy.vocabulary import DENSE_MODULES

PRECISIONS: tuple[str, ...] = ("fp16", "int8")
ENGINE_SUFFIX = ".plan"


def plan_flags(precision: str, module_precision: str, *, weak_typing: bool,
               module: str) -> tuple[str, ...]:
    """The builder flags of one module (names of ``tensorrt.BuilderFlag`` members, or
    ``STRONGLY_TYPED`` for a strongly typed network); refused with a ``ConfigError`` when the
    module's graph cannot give the requested precision."""
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; known: {list(PRECISIONS)}",
                          field="--precision")
    if weak_typing:
        return ("INT8", "FP16") if precision == "int8" and module_precision == "int8" \
            else ("FP16",)
    if precision == "fp16" and module_precision != "fp16":
        raise ConfigError(f"this TensorRT builds strongly typed networks only, so the graph's "
                          f"types decide the precision, and module {module!r} is "
                          f"{module_precision}: make an FP16 package first (`bevdeploy optimize "
                          "--fp16`)", field="--precision")
    return ("STRONGLY_TYPED",)


def build_engines(package: str | Path, *, precision: str, workspace_gb: float | None = None,
                  timing_cache: Path | None = None, out: Path | None = None,
                  device: str = "cuda", log: Callable[[str], None] = print) -> Path:
    """Build, write and record one engine per dense module; returns the package written
    (``out``, or ``package`` itself when ``out`` is None)."""
    package = Path(package)
    pkg = load_package(package)
    if precision == "int8" and not any(pkg.module(m).precision == "int8" for m in DENSE_MODULES):
        raise ConfigError("--precision int8 builds from INT8 (QDQ) graphs, and this package has "
                          "none: make one with `bevdeploy optimize --int8`", field="--precision")
    if workspace_gb is not None and workspace_gb <= 0:
        raise ConfigError(f"must be > 0 GB, got {workspace_gb}", field="--workspace")
    trt = import_tensorrt()
    torch = import_torch("tensorrt")
    dev = resolve_device(GpuOptions(device=device), "tensorrt", allow_cpu=False)
    gpu, capability = gpu_identity(dev)
    weak = hasattr(trt.BuilderFlag, "FP16")
    flags = {m: plan_flags(precision, pkg.module(m).precision, weak_typing=weak, module=m)
             for m in DENSE_MODULES}
    workspace = None if workspace_gb is None else int(workspace_gb * (1 << 30))
    cache = timing_cache.read_bytes() if timing_cache is not None and timing_cache.exists() \
        else b""

    in_place = out is None or Path(out).resolve() == package.resolve()
    root = package if in_place else staging_dir(out)
    try:
        if not in_place:
            shutil.copytree(package, root, dirs_exist_ok=True)
        modules = dict(pkg.manifest.modules)
        logger = trt.Logger(trt.Logger.WARNING)
        with torch.cuda.device(dev):
            for name in DENSE_MODULES:
                entry = pkg.module(name)
                log(f"building {name} ({', '.join(flags[name])}) on {gpu}")
                data, cache = _build_one(trt, logger, pkg.path(name), name, flags[name],
                                         workspace, cache, timing_cache)
                file = Path(entry.file).stem + ENGINE_SUFFIX
                atomic_write(root / file, data)
                modules[name] = replace(entry, engine=EngineEntry(
                    file=file, sha256=hashlib.sha256(data).hexdigest(), size=len(data),
                    precision=precision, tensorrt=trt.__version__, gpu=gpu,
                    compute_capability=capability, flags=flags[name],
                    workspace_bytes=workspace))
        manifest = replace(pkg.manifest, modules=modules)
        atomic_write(root / MANIFEST_NAME, manifest.to_json().encode())
        if not in_place:
            replace_dir(root, out)
    except BaseException:
        if not in_place:
            shutil.rmtree(root, ignore_errors=True)
        raise
    if timing_cache is not None:
        atomic_write(timing_cache, cache)
    return package if in_place else Path(out)


def _build_one(trt: Any, logger: Any, onnx_path: Path, name: str, flags: tuple[str, ...],
               workspace: int | None, cache: bytes, cache_path: Path | None
               ) -> tuple[bytes, bytes]:
    """(serialized engine, updated timing cache) of one module."""
    where = f"modules.{name}"
    builder = trt.Builder(logger)
    creation = 0
    if "STRONGLY_TYPED" in flags:
        creation = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(creation)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise PackageError(f"TensorRT's ONNX parser refused module {name!r}: {errors}",
                           path=onnx_path, field=f"{where}.file")
    config = builder.create_builder_config()
    for flag in flags:
        if flag != "STRONGLY_TYPED":
            config.set_flag(getattr(trt.BuilderFlag, flag))
    if workspace is not None:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
    if not config.set_timing_cache(config.create_timing_cache(cache), ignore_mismatch=False):
        raise ConfigError("TensorRT refused the timing cache (made on another GPU or TensorRT "
                          "version?); delete it or give another file", path=cache_path,
                          field="--timing-cache")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise PackageError(f"TensorRT could not build an engine for module {name!r} (its log "
                           "above says why)", path=onnx_path, field=f"{where}.file")
    return bytes(serialized), bytes(config.get_timing_cache().serialize())
