"""``bench``, ``bench-kernels`` and ``bench-ray``: speed measured, never asserted (tests check
correctness)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.table import Table

from bevdeploy.cli._app import command, console, err_console, warn
from bevdeploy.cli._options import GPU_CONFIG_HELP, JsonOutOpt, WideOpt

@command(name="bench-kernels")
def bench_kernels(preset: str = typer.Option("nuscenes-resnet50", help="Preset whose shapes "
                                             "are timed."),
                  points: int = typer.Option(350_000, help="Points fed to voxelize/depth."),
                  voxels: int = typer.Option(120_000, help="Voxels fed to the SCN executor."),
                  scn: bool = typer.Option(True, help="cpu: also time the SCN executor "
                                           "against spconv's CPU path on the same voxels (needs "
                                           "torch); cuda always times the SCN on torch."),
                  repeats: int = typer.Option(10, min=3, help="Timed runs after warm-up."),
                  device: str = typer.Option("cpu", help="cpu: the numba kernels; cuda: the "
                                             "Triton kernels on the GPU, CUDA-event timed, "
                                             "floors from its copy bandwidth (no SCN rows)."),
                  json_out: JsonOutOpt = None,
                  wide: WideOpt = False) -> None:
    """Each kernel's median time after warm-up next to its floor on this machine (bytes
    over the measured copy bandwidth, or MACs over the measured float32 GEMM rate)."""
    import dataclasses
    import json

    from bevdeploy.errors import ConfigError
    from bevdeploy.io import atomic_write
    from bevdeploy.presets import get_preset
    from bevdeploy.bench.kernels import kernel_benchmarks, kernel_table
    from bevdeploy.tables import print_report

    p = get_preset(preset)
    if device == "cuda":
        try:
            import torch
            from bevdeploy.bench.kernels_cuda import cuda_kernel_benchmarks
        except ImportError as exc:
            raise ConfigError(f"the CUDA kernels need torch and triton (pip install "
                              f"'bevdeploy[gpu]'): {exc}", field="--device") from None
        if not torch.cuda.is_available():
            raise ConfigError("no CUDA device is usable", field="--device")
        rows = cuda_kernel_benchmarks(p, num_points=points, repeats=repeats)
    elif device == "cpu":
        with console.status(f"timing the CPU kernels on {p.name} shapes ({repeats} runs each "
                            "after warm-up; a first run compiles them too) …"):
            rows = kernel_benchmarks(p, num_points=points, repeats=repeats)
    else:
        raise ConfigError(f"expected cpu or cuda, got {device!r}", field="--device")
    result: dict = {"kernels": [dataclasses.asdict(r) for r in rows]}
    if scn and device == "cpu":
        from bevdeploy.bench.scn import scn_benchmark

        with console.status(f"timing the SCN executor and spconv on {voxels:,} voxels …"):
            result["scn"] = scn_benchmark(p.name, voxels, repeats=repeats)
    title = (f"{device.upper()} kernels, {p.name} shapes, ms (median of {repeats} after "
             "warm-up)")
    print_report(console, kernel_table(rows, result.get("scn"), title=title, wide=wide,
                                       digits=3 if device == "cuda" else 1), wide=wide)
    if json_out is not None:
        atomic_write(json_out, json.dumps(result, indent=1).encode())


@command(name="bench")
def bench(package: list[Path] = typer.Option(..., help="Deploy package; repeat to compare "
                                             "several (e.g. fp32 and int8) in one run."),
          backend: list[str] = typer.Option(["onnxruntime"], help="onnxruntime, openvino, "
                                            "auto (resolved per package on this CPU, its "
                                            "reason recorded), torch-cuda or tensorrt; "
                                            "repeatable."),
          inference_precision: list[str] = typer.Option(["fp32"], help="fp32 or bf16: what "
                                                        "openvino (or auto) computes the "
                                                        "float parts in, bf16 where its CPU "
                                                        "plugin has it; repeatable (each is "
                                                        "a column; onnxruntime runs once)."),
          schedule: list[str] = typer.Option(["sequential"], help="sequential, branches or "
                                             "frames (the CPU backends'; a GPU backend runs "
                                             "under the CUDA schedule); repeatable."),
          gpu_config: Optional[list[str]] = typer.Option(None, help=GPU_CONFIG_HELP + " "
                                                         "Repeatable: each GPU backend runs with "
                                                         "each (default fp32); CPU backends "
                                                         "ignore it."),
          gpu_ladder: bool = typer.Option(False, "--gpu-ladder", help="GPU backends run the "
                                          "ladder fp32+host, fp32, fp16, fp16+cl, "
                                          "fp16+cl+graph, fp16+cl+graph+streams (tensorrt: "
                                          "fp32+host, fp32, graph, graph+streams), one switch "
                                          "changed per step, so each step shows its worth."),
          reference: bool = typer.Option(True, "--reference/--no-reference", help="Also time "
                                         "the PyTorch eager reference and print ratios to it."),
          reference_device: str = typer.Option("cpu", help="Where the eager reference runs: "
                                                "cpu, or cuda (the GPU targets' baseline; its "
                                                "sparse encoder on spconv's CUDA build, else "
                                                "on bevdeploy's torch SCN, as its column "
                                                "says)."),
          checkpoint: Optional[Path] = typer.Option(None, help="Weights of the reference "
                                                    "(default: the package's own when found, "
                                                    "else a seeded random init)."),
          precision: Optional[str] = typer.Option(None, help="Refuse packages whose dense "
                                                  "modules are not at this precision "
                                                  "(fp32/fp16/int8)."),
          threads: Optional[int] = typer.Option(None, min=1, help="Thread budget of every "
                                                "variant (default: all cores)."),
          frames: int = typer.Option(10, min=1, help="Timed frames per variant."),
          warmup: int = typer.Option(2, min=0, help="Untimed frames first (JIT, caches)."),
          data: Optional[Path] = typer.Option(None, help="nuScenes-format dataset (default: a "
                                              "small synthetic world, generated once)."),
          version: str = typer.Option("v1.0-mini", help="nuScenes version folder of --data."),
          split: str = typer.Option("mini_val", help="Split of --data."),
          peak_seconds: float = typer.Option(1.0, min=0.0, help="Seconds each peak problem "
                                             "(a large MatMul / Conv per engine and precision, "
                                             "the BLAS SGEMMs) is timed for, before and after "
                                             "the variants; at least 3 calls each."),
          json_out: JsonOutOpt = None,
          wide: WideOpt = False,
          chart: Optional[Path] = typer.Option(Path("out/bench/latency.png"), help="Stacked "
                                               "per-stage latency chart, one bar per variant "
                                               "(PNG, written atomically).")) -> None:
    """Per-stage and end-to-end latency (median, p90), frames/s and peak memory of packages,
    backends and schedules side by side with the PyTorch eager reference, each variant in its
    own process; the roofline: this machine's peak rates per engine and precision, each
    variant's floor from its MACs at those peaks, and its median over that floor."""
    import numba

    from bevdeploy.bench import (FrameSource, check_devices, default_world, plan_variants,
                                 run_bench)
    from bevdeploy.tables import print_report

    budget = threads or numba.config.NUMBA_NUM_THREADS
    variants = plan_variants(package, backends=backend, schedules=schedule, threads=budget,
                             reference=reference, checkpoint=checkpoint, precision=precision,
                             gpu_configs=gpu_config or (), gpu_ladder=gpu_ladder,
                             reference_device=reference_device,
                             inference_precisions=inference_precision)
    check_devices(variants)  # before the default world is generated
    source = default_world() if data is None else FrameSource(str(data), version, split)
    report = run_bench(variants, source, frames=frames, warmup=warmup, threads=budget,
                       peak_seconds=peak_seconds,
                       progress=lambda message: err_console.print(message, markup=False,
                                                                   highlight=False))
    for table in report.wide_tables() if wide else report.narrow_tables():
        print_report(console, table, wide=wide)
    for warning in report.warnings:
        warn(warning)
    if chart is not None:
        from bevdeploy.bench.chart import latency_chart

        console.print(f"chart: {latency_chart(report, chart)}", highlight=False)
    if json_out is not None:
        console.print(f"wrote {report.write_json(json_out)}")


@command(name="bench-ray")
def bench_ray(package: Path = typer.Option(..., help="Deploy package (a path every node reads)."),
              data: Path = typer.Option(..., help="nuScenes-format dataset root (a path every "
                                        "node reads)."),
              ray: str = typer.Option("local", "--ray", help="local, auto or HOST:PORT."),
              workers: list[int] = typer.Option([1, 2], help="Worker counts to measure; "
                                                "repeatable."),
              cpus_per_worker: float = typer.Option(1.0, help="CPUs each worker reserves (and "
                                                    "its runtime threads)."),
              version: str = typer.Option("v1.0-mini", help="nuScenes version folder."),
              split: str = typer.Option("mini_val", help="Split."),
              limit: Optional[int] = typer.Option(None, min=1, help="Only the first N frames."),
              json_out: JsonOutOpt = None) -> None:
    """Frames/s of a Ray pool against its number of workers, beside the same frames in this
    process, and the bytes each frame's result moves through Ray's object store
    (bevdeploy.distributed.bench)."""
    import json

    from bevdeploy.data.sources import DatasetSource
    from bevdeploy.distributed import check_ray_options, connect
    from bevdeploy.distributed.bench import measure
    from bevdeploy.io import atomic_write
    from bevdeploy.package import load_package

    options = check_ray_options(ray, workers=max(workers), cpus_per_worker=cpus_per_worker)
    pkg = load_package(package)
    source = DatasetSource(data, pkg.preset, version=version, split=split, limit=limit)
    with connect(options):
        rows = measure(source, package, options, workers,
                       progress=lambda m: err_console.print(m, markup=False, highlight=False))
    table = Table(title=f"{len(source)} frames of {split}, {cpus_per_worker:g} CPU(s) per worker, "
                        f"--ray {ray}")
    for name in ("workers", "frames/s", "× in-process", "startup s", "result bytes/frame"):
        table.add_column(name, justify="right")
    base = rows[0].frames_per_s
    for row in rows:
        table.add_row("in process" if row.workers == 0 else str(row.workers),
                      f"{row.frames_per_s:.2f}", f"{row.frames_per_s / base:.2f}",
                      f"{row.startup_s:.1f}", "—" if row.result_bytes_per_frame is None
                      else f"{row.result_bytes_per_frame:,}")
    console.print(table)
    if json_out is not None:
        doc = {"address": ray, "cpus_per_worker": cpus_per_worker, "frames": len(source),
               "rows": [r.to_dict() for r in rows]}
        console.print(f"wrote {atomic_write(json_out, json.dumps(doc, indent=1).encode())}")
