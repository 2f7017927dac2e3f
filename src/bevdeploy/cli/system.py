"""``presets``, ``model-info`` and ``doctor``: what the tool knows and what this machine has."""

from __future__ import annotations

import typer
from rich.table import Table

from bevdeploy import __version__
from bevdeploy.cli._app import command, console, presets_app


@command(name="model-info")
def model_info(preset: str = typer.Option("nuscenes-resnet50", help="Preset name or YAML path."),
               seed: int = typer.Option(0, help="Seed of the probe frame the MACs are counted on.")
               ) -> None:
    """Parameters and MACs per top-level module, counted on a real forward of a probe frame
    (sparse convolutions from their kernel maps): the floor for the performance work."""
    from bevdeploy.model.macs import model_info as count, model_info_table, probe_frame
    from bevdeploy.presets import get_preset

    p = get_preset(preset)
    with console.status(f"counting parameters and MACs of {p.name} on a real forward of a "
                        "probe frame (minutes for the full-size presets on two cores) …"):
        info = count(p, probe_frame(p, seed=seed))
    console.print(model_info_table(info, title=f"{p.name} model info"))


@command(presets_app, "list")
def presets_list() -> None:
    """Names of the registered presets."""
    from bevdeploy.presets import get_preset, list_presets

    table = Table(title="presets")
    for col in ("name", "cameras", "image", "BEV", "voxel grid", "backbone"):
        table.add_column(col)
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
def doctor() -> None:
    """Versions of the stack, and whether CUDA / TensorRT are usable (with the reason if not)."""
    from bevdeploy.doctor import run_checks

    table = Table(title=f"bevdeploy {__version__}")
    table.add_column("component")
    table.add_column("status")
    table.add_column("detail")
    for c in run_checks():
        table.add_row(c.name, "[green]ok[/green]" if c.ok else "[yellow]no[/yellow]", c.detail)
    console.print(table)
