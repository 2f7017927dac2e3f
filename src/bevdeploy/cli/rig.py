"""``rig from-nuscenes``, ``rig from-info``, ``rig check``: the rig YAML of ``infer --calib``
written from a dataset or an info file, and checked against a package (README, "Rig files")."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from bevdeploy.cli._app import app, command, console
from bevdeploy.cli._options import PresetOpt, VersionOpt

rig_app = typer.Typer(no_args_is_help=True, help="Write and check rig (calibration) YAML files.")
app.add_typer(rig_app, name="rig")


@command(rig_app, "from-nuscenes")
def from_nuscenes(data: Path = typer.Option(..., help="nuScenes-format dataset root."),
                  sample: str = typer.Option(..., help="Sample token."),
                  out: Path = typer.Option(..., help="Rig YAML to write (atomically)."),
                  version: VersionOpt = "v1.0-mini",
                  preset: PresetOpt = "tiny") -> None:
    """Write the rig of one dataset sample: the preset's cameras, their intrinsics and
    camera2lidar (key LiDAR frame), lidar2ego and ego2global."""
    from bevdeploy.data.rig_files import rig_from_nuscenes
    from bevdeploy.presets import get_preset

    path = rig_from_nuscenes(data, sample, out, get_preset(preset), version=version)
    console.print(f"wrote {path}", highlight=False)


@command(rig_app, "from-info")
def from_info(info: Path = typer.Argument(..., help="Info .pkl: legacy 'infos' (mmdet3d 0.x "
                                          "/ mit-han-lab) or mmdet3d >= 1.1 'data_list'."),
              out: Path = typer.Option(..., help="Rig YAML to write (atomically)."),
              index: int = typer.Option(0, min=0, help="Sample index, in time order."),
              preset: PresetOpt = "tiny") -> None:
    """Write the rig of one sample of an info file."""
    from bevdeploy.data.rig_files import rig_from_info
    from bevdeploy.presets import get_preset

    path = rig_from_info(info, out, get_preset(preset), index=index)
    console.print(f"wrote {path}", highlight=False)


@command(rig_app, "check")
def check(rig: Path = typer.Argument(..., help="Rig YAML."),
          package: Path = typer.Option(..., help="Deploy package whose cameras the rig must "
                                       "describe.")) -> None:
    """Validate a rig file for a package's cameras and show what it says per camera."""
    from bevdeploy.data.rig_files import check_rig
    from bevdeploy.package import load_package

    summaries = check_rig(rig, load_package(package).preset)
    table = Table(title=f"{rig}: OK for {package}")
    for col in ("camera", "fx, fy (px)", "cx, cy (px)", "position in LiDAR frame (m)",
                "optical axis heading (deg)"):
        table.add_column(col)
    for s in summaries:
        table.add_row(s.name, f"{s.focal[0]:.1f}, {s.focal[1]:.1f}",
                      f"{s.principal_point[0]:.1f}, {s.principal_point[1]:.1f}",
                      ", ".join(f"{v:.3f}" for v in s.position), f"{s.heading_deg:.1f}")
    console.print(table)
