"""``bag info`` and the glue ``infer``/``eval``/``synth`` use for ROS 2 bags: opening a bag
as a frame source, the Foxglove scene sink, the ground truth's sample keys."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.table import Table

from bevdeploy.cli._app import app, command, console
from bevdeploy.cli._options import PresetOpt

bag_app = typer.Typer(help="ROS 2 bags (MCAP): what a bag holds and how bevdeploy reads it.",
                      no_args_is_help=True)
app.add_typer(bag_app, name="bag")


def open_bag(bag: Path, preset: Any, *, topics: Optional[Path], slop: float,
             keys: dict[int, str] | None = None) -> Any:
    """The bag as a frame source (``data.bags.source.BagSource``), opened before any model.
    With ``keys`` (``eval``) the bag must carry the ego pose: scoring places the boxes in the
    global frame, and a bag without one would give a plausible, meaningless mAP."""
    from bevdeploy.data.bags.source import BagSource
    from bevdeploy.errors import InputError

    source = BagSource(bag, preset, topics=topics, slop_s=slop, keys=keys)
    if keys is not None and not source.global_poses:
        why = ("it has no /tf topic" if "/tf" not in source.tf_topics else
               "no /tf transform has map, odom or world as its parent (or name the chain in "
               "--topics: frames: {global: FRAME, base: FRAME})")
        source.bag.close()
        raise InputError(f"eval needs the ego pose in /tf to score in the global frame, and "
                         f"{why}; infer runs on this bag without it", path=source.bag.path,
                         field="/tf")
    return source


def dataset_keys(data: Path, preset: Any, *, version: str, split: str) -> dict[int, str]:
    """Sample timestamp (µs) → sample token of ``split``: the ground truth a bag's sweeps are
    scored against (a sweep is a sample when its stamp is the sample's timestamp)."""
    from bevdeploy.data.sources import DatasetSource

    loader = DatasetSource(data, preset, version=version, split=split).loader
    return {int(loader.nusc.get("sample", t)["timestamp"]): t for t in loader.sample_tokens}


def scene_sink(bag_out: Path, source: Any, target: Any, *, overwrite: bool) -> Any:
    """``--bag-out``: the detections as a Foxglove SceneUpdate, with the input bag copied.
    ``target`` is the command's ``io.OutputDir``: ``--out`` is swapped in whole when the run
    ends, so a ``--bag-out`` inside it is written into the staging directory and arrives with
    the rest (a file written into the old ``--out`` would be deleted by the swap). Refused:
    ``--out`` itself, the input bag (the copy reads it while the output replaces it), and an
    existing file elsewhere without ``--overwrite``."""
    import os

    from bevdeploy.data.bags.reader import Bag
    from bevdeploy.errors import OutputError
    from bevdeploy.sinks.mcap import FoxgloveScene

    path = Path(os.path.abspath(bag_out))
    if path == target.out or path.is_dir():
        raise OutputError("is a directory (or --out itself); name a file such as "
                          "OUT/scene.mcap", path=bag_out, field="--bag-out")
    if os.path.realpath(path) == os.path.realpath(source.bag.path):
        raise OutputError("is the input --bag; name another file", path=bag_out,
                          field="--bag-out")
    if target.out in path.parents:
        path = target.staging / path.relative_to(target.out)
    elif path.exists() and not overwrite:
        raise OutputError("already exists; pass --overwrite to replace it", path=bag_out,
                          field="--bag-out")
    return FoxgloveScene(path, score_threshold=0.0, headers=source.header,
                         copy_from=Bag(source.bag.path))


@command(bag_app, name="info")
def info(bag: Path = typer.Argument(..., help="The .mcap file (or a ros2 bag directory)."),
         preset: PresetOpt = "tiny") -> None:
    """The topics of a bag (type, messages, rate) and the topic map bevdeploy proposes for the
    preset's cameras (save it as a --topics YAML to edit)."""
    from bevdeploy.data.bags.reader import Bag
    from bevdeploy.data.bags.topics import detect_topic_map
    from bevdeploy.errors import InputError
    from bevdeploy.presets import get_preset

    with Bag(bag) as b:
        table = Table(title=f"{b.path}")
        for col in ("topic", "type", "messages", "rate (Hz)"):
            table.add_column(col, justify="right" if col in ("messages", "rate (Hz)") else "left")
        for t in b.topics.values():
            table.add_row(t.name, t.schema, str(t.count), f"{b.rate_hz(t.name):.1f}")
        console.print(table)
        try:
            proposed = detect_topic_map(b, get_preset(preset).cameras.names)
        except InputError as exc:
            console.print(f"no topic map proposed: {exc}", highlight=False, soft_wrap=True)
            return
    for note in proposed.notes:
        console.print(f"note: {note}", highlight=False)
    console.print("proposed topic map (--topics):\n" + proposed.to_yaml(), highlight=False)
