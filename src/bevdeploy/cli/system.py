"""``presets``, ``model-info`` and ``doctor``: what the tool knows and what this machine has."""

from __future__ import annotations

import typer

from bevdeploy import __version__
from bevdeploy.cli._app import command, console, presets_app
from bevdeploy.cli._options import JsonOutOpt, WideOpt

DETAIL_WIDTH = 48  # doctor: a longer detail goes into a numbered note below the table


@command(name="model-info")
def model_info(preset: str = typer.Option("nuscenes-resnet50", help="Preset name or YAML path."),
               seed: int = typer.Option(0, help="Seed of the probe frame the MACs are counted on."),
               json_out: JsonOutOpt = None,
               wide: WideOpt = False) -> None:
    """Parameters and MACs per top-level module, counted on a real forward of a probe frame
    (sparse convolutions from their kernel maps): the floor for the performance work."""
    from bevdeploy.model.macs import (model_info as count, model_info_json, model_info_table,
                                      narrow_model_info_table, probe_frame)
    from bevdeploy.presets import get_preset
    from bevdeploy.tables import print_report

    p = get_preset(preset)
    with console.status(f"counting parameters and MACs of {p.name} on a real forward of a "
                        "probe frame (minutes for the full-size presets on two cores) …"):
        info = count(p, probe_frame(p, seed=seed))
    title = f"{p.name} model info"
    print_report(console, model_info_table(info, title=title) if wide else
                 narrow_model_info_table(info, title=title), wide=wide)
    if json_out is not None:
        from bevdeploy.io import atomic_write

        console.print(f"wrote {atomic_write(json_out, model_info_json(info, p.name).encode())}",
                      highlight=False)


@command(presets_app, "list")
def presets_list() -> None:
    """Names of the registered presets."""
    from bevdeploy.presets import get_preset, list_presets
    from bevdeploy.tables import compact_table

    table = compact_table("presets")
    for col in ("name", "cameras", "image", "BEV", "voxel grid", "backbone"):
        table.add_column(col, no_wrap=True)
    for name in list_presets():
        p = get_preset(name)
        bb = p.model.backbone
        table.add_row(name, str(p.cameras.num_cameras), "×".join(map(str, p.cameras.image_size)),
                      "×".join(map(str, p.bev_size)), "×".join(map(str, p.grid_size)),
                      f"{bb.type}{bb.depth if bb.type == 'resnet' else '-T'}")
    console.print(table)


@command(presets_app, "show")
def presets_show(name: str = typer.Argument(..., help="Preset name or YAML path.")) -> None:
    """Print a preset as YAML (edit it and pass the file wherever a preset is accepted)."""
    from bevdeploy.presets import get_preset

    console.print(get_preset(name).to_yaml(), markup=False, highlight=False)


# ---------------------------------------------------------------------------------- system


@command()
def doctor(json_out: JsonOutOpt = None, wide: WideOpt = False) -> None:
    """Versions of the stack, and whether CUDA / TensorRT are usable (with the reason if not);
    a long detail is numbered below the table (--wide: in it)."""
    from rich.markup import escape
    from rich.table import Table

    from bevdeploy.doctor import run_checks
    from bevdeploy.tables import Footnotes, compact_table, print_report, with_notes

    checks = run_checks()
    table = Table(title=f"bevdeploy {__version__}") if wide else \
        compact_table(f"bevdeploy {__version__}")
    table.add_column("component", no_wrap=True)
    table.add_column("status", no_wrap=True)
    table.add_column("detail")
    notes = Footnotes()
    for c in checks:
        detail = c.detail if wide or len(c.detail) <= DETAIL_WIDTH else notes.ref(c.detail)
        table.add_row(c.name, "[green]ok[/green]" if c.ok else "[yellow]no[/yellow]",
                      escape(detail))
    print_report(console, with_notes(table, notes), wide=wide)
    if json_out is not None:
        import dataclasses
        import json

        from bevdeploy.io import atomic_write

        doc = {"version": __version__, "checks": [dataclasses.asdict(c) for c in checks]}
        console.print(f"wrote {atomic_write(json_out, json.dumps(doc, indent=1).encode())}",
                      highlight=False)
