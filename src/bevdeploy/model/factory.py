"""The one way to build the PyTorch reference with its weights.

Every place that needs the eager model — the exporter, the ``torch`` backend of ``infer`` and
``eval``, ``compare``'s reference side, ``bench``'s reference column, the MAC counter — builds it
here, so that "which weights" is decided by one policy: the given checkpoint, else (where the
caller allows it) the seeded random initialisation ``vocabulary.RANDOM_INIT_SEED`` that the
exporter uses for packages without a checkpoint. The random draw happens inside a forked RNG,
so building a model never disturbs the caller's random stream.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from bevdeploy.errors import CheckpointError
from bevdeploy.model.bevfusion import BEVFusion
from bevdeploy.model.checkpoint import FORMAT_MMDET3D, LoadReport, load_checkpoint
from bevdeploy.model.init import distinct_init
from bevdeploy.package import MANIFEST_NAME, DeployPackage, sha256_file
from bevdeploy.presets import Preset
from bevdeploy.vocabulary import (BOX_CONVENTION_MIT, BOX_CONVENTION_MMDET3D, BOX_CONVENTIONS,
                                  RANDOM_INIT_SEED)


@dataclass(frozen=True)
class Weights:
    """Where a reference model's weights came from: a checkpoint's load report, or the seed of
    a random initialisation (``report`` is then ``None``)."""

    report: LoadReport | None
    seed: int
    checkpoint: Path | None = None
    box_convention: str = BOX_CONVENTION_MIT

    @property
    def random(self) -> bool:
        return self.report is None

    def describe(self) -> str:
        """``random init (seed 0)`` or the checkpoint's file name."""
        if self.checkpoint is None:
            return f"random init (seed {self.seed})"
        return self.checkpoint.name


def checkpoint_box_convention(report: LoadReport | None) -> str:
    """The box convention a checkpoint's head was trained in, from its origin: ``mmdet3d-1.x``
    for mmdetection3d-1.x names, else ``mit`` (random weights included)."""
    if report is not None and report.source_format == FORMAT_MMDET3D:
        return BOX_CONVENTION_MMDET3D
    return BOX_CONVENTION_MIT


def report_record(report: LoadReport) -> dict[str, Any]:
    """The load report as JSON-ready data (the manifest's ``checkpoint_report``). The path is
    reduced to the file name: a package must not depend on, or reveal, the exporting machine's
    directories."""
    return {**asdict(report), "path": Path(report.path).name, "ok": report.ok}


def create_model(preset: Preset, checkpoint: str | Path | None = None, *,
                 seed: int = RANDOM_INIT_SEED, strict: bool = True,
                 box_convention: str | None = None) -> tuple[BEVFusion, Weights]:
    """``preset``'s reference model in eval mode: loaded from ``checkpoint`` when one is given
    (``strict``: any key that does not fit is a ``CheckpointError``), else initialised from
    ``seed`` (in a forked RNG) by ``model.init.distinct_init``, whose proposal scores are
    distinct as trained weights' are. Its head decodes in ``box_convention``, else the checkpoint's
    (``checkpoint_box_convention``)."""
    if box_convention is not None and box_convention not in BOX_CONVENTIONS:
        raise CheckpointError(f"box convention {box_convention!r} is none of "
                              f"{list(BOX_CONVENTIONS)}", field="box_convention")
    path = None if checkpoint is None else Path(checkpoint)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model = BEVFusion(preset)
        if path is None:
            distinct_init(model)
    report = None
    if path is not None:
        report = load_checkpoint(model, path, strict=strict)
    convention = box_convention or checkpoint_box_convention(report)
    model.heads["object"].bbox_coder.box_convention = convention
    return model.eval(), Weights(report, seed, path, convention)


def package_reference(pkg: DeployPackage, checkpoint: str | Path | None, *,
                      require_match: bool = True) -> tuple[BEVFusion, Weights]:
    """The reference model of a deploy package: the weights it was exported from.

    The manifest records its checkpoint's file name and SHA-256. When ``checkpoint`` is
    ``None``, that file is looked for where it can be found by its hash (``find_recorded``).
    With ``require_match`` (``compare``: both sides must hold the same weights) a package of
    random weights takes no checkpoint and gets the exporter's seeded initialisation, and a
    package from a checkpoint needs exactly that file: a given file of another hash is named by
    both hashes, and when none is given and none is found the refusal names the recorded file,
    its hash and the places looked in. Without it (``bench``: only the speed counts)
    ``checkpoint`` is used as given, else the found file, else the seeded initialisation.
    """
    recorded = pkg.manifest.checkpoint
    path = None if checkpoint is None else Path(checkpoint)
    looked: list[str] = []
    if path is None and recorded is not None:
        path, looked = find_recorded(pkg)
    if not require_match:
        return create_model(pkg.preset, path, box_convention=pkg.manifest.box_convention)
    manifest = pkg.root / MANIFEST_NAME
    if recorded is None and path is not None:
        raise CheckpointError("the package holds random weights (its manifest records no "
                              "checkpoint), so no checkpoint can be its reference; compare "
                              "without one", path=path, field="checkpoint")
    if recorded is not None:
        name = recorded.get("file", "?")
        if path is None:
            raise CheckpointError(f"the package was exported from {name} (sha256 "
                                  f"{recorded['sha256']}), not found (looked at: "
                                  f"{'; '.join(looked) or 'nothing to look at'}); pass that "
                                  "checkpoint as the reference",
                                  path=manifest, field="checkpoint")
        if not path.is_file():
            raise CheckpointError("no such checkpoint file", path=path, field="checkpoint")
        digest = sha256_file(path)
        if digest != recorded["sha256"]:
            raise CheckpointError(f"sha256 {digest} differs from the {recorded['sha256']} of "
                                  f"{name}, the checkpoint the package was exported from",
                                  path=path, field="checkpoint.sha256")
    return create_model(pkg.preset, path, box_convention=pkg.manifest.box_convention)


def find_recorded(pkg: DeployPackage) -> tuple[Path | None, list[str]]:
    """The checkpoint a package's manifest records, where it can be found honestly: the
    preset's default file, then a file of the recorded name beside the package (in the
    package directory's parent), each taken only if its SHA-256 is the recorded one, since a
    name alone proves nothing. Returns the file (``None`` if none fits) and, for a refusal,
    what was looked at and why it did not fit."""
    recorded = pkg.manifest.checkpoint
    if recorded is None:
        return None, []
    candidates: list[Path] = []
    if pkg.preset.checkpoint_path is not None:
        candidates.append(Path(pkg.preset.checkpoint_path))
    name = str(recorded.get("file", ""))
    beside = pkg.root.parent / name
    if name and Path(name).name == name and name not in (".", "..") and beside not in candidates:
        candidates.append(beside)  # a bare file name only: the manifest cannot point elsewhere
    looked = []
    for candidate in candidates:
        if not candidate.is_file():
            looked.append(f"{candidate} (absent)")
            continue
        digest = sha256_file(candidate)
        if digest == recorded["sha256"]:
            return candidate, looked
        looked.append(f"{candidate} (sha256 {digest})")
    return None, looked
