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
    """The bag as a frame source (``data.bags.source.BagSource``), opened before any model."""
    from bevdeploy.data.bags.source import BagSource

    return BagSource(bag, preset, topics=topics, slop_s=slop, keys=keys)


def dataset_keys(data: Path, preset: Any, *, version: str, split: str) -> dict[int, str]:
    """Sample timestamp (µs) → sample token of ``split``: the ground truth a bag's sweeps are
    scored against (a sweep is a sample when its stamp is the sample's timestamp)."""
    from bevdeploy.data.sources import DatasetSource

    loader = DatasetSource(data, preset, version=version, split=split).loader
    return {int(loader.nusc.get("sample", t)["timestamp"]): t for t in loader.sample_tokens}


def scene_sink(path: Path, source: Any) -> Any:
    """``--bag-out``: the detections as a Foxglove SceneUpdate, with the input bag copied."""
    from bevdeploy.data.bags.reader import Bag
    from bevdeploy.sinks.mcap import FoxgloveScene

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
