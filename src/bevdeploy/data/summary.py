"""A quick census of a nuScenes-format dataset read straight from its JSON tables.

Used by ``bevdeploy synth`` and the demo to say what was written without loading the devkit
(which builds reverse indices over every table and takes seconds on real nuScenes).
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from bevdeploy.errors import DatasetError

_TABLES = ("scene", "sample", "sample_data", "sample_annotation", "instance", "category")


@dataclass
class DatasetSummary:
    root: Path
    version: str
    scenes: list[str]
    samples: int
    lidar_key_sweeps: int
    lidar_sweeps: int
    camera_images: int
    annotations: int
    mean_points_per_key_sweep: float
    per_class: Counter = field(default_factory=Counter)


def summarize(root: str | Path, version: str = "v1.0-mini") -> DatasetSummary:
    root = Path(root)
    tables = {}
    for name in _TABLES:
        path = root / version / f"{name}.json"
        try:
            tables[name] = json.loads(path.read_text())
        except FileNotFoundError:
            raise DatasetError("table missing: not a nuScenes-format dataset", path=path) from None
        except json.JSONDecodeError as exc:
            raise DatasetError(f"not valid JSON: {exc}", path=path) from None
    categories = {c["token"]: c["name"] for c in tables["category"]}
    instance_cat = {i["token"]: categories[i["category_token"]] for i in tables["instance"]}
    per_class = Counter(instance_cat[a["instance_token"]] for a in tables["sample_annotation"])
    lidar = [sd for sd in tables["sample_data"] if "LIDAR" in sd["filename"]]
    key = [sd for sd in lidar if sd["is_key_frame"]]
    sizes = [(root / sd["filename"]).stat().st_size for sd in key if (root / sd["filename"]).exists()]
    mean_pts = (sum(sizes) / len(sizes) / (5 * 4)) if sizes else 0.0
    return DatasetSummary(
        root=root, version=version,
        scenes=[s["name"] for s in tables["scene"]],
        samples=len(tables["sample"]),
        lidar_key_sweeps=len(key),
        lidar_sweeps=len(lidar),
        camera_images=sum(1 for sd in tables["sample_data"] if "CAM" in sd["filename"]),
        annotations=len(tables["sample_annotation"]),
        mean_points_per_key_sweep=mean_pts,
        per_class=per_class,
    )
