"""The import rules of docs/architecture.md#import-rules, checked on the real source tree.

The graph is built with ``ast`` from every module under ``src/bevdeploy``; *every* import counts
— at module level, inside functions, under ``if TYPE_CHECKING:`` — since a lazy or type-only
import is still a real dependency (it runs, or it couples the modules' names). An edge goes to the
module that is named (``from a.b import c`` names ``a.b.c`` when that is a module, else ``a.b``);
the implicit imports of parent packages are not edges.

Rules:

1. no import cycles between modules of ``bevdeploy``;
2. ``bevdeploy.runtime`` imports neither ``bevdeploy.model``, ``bevdeploy.export`` nor
   ``bevdeploy.train``;
3. ``bevdeploy.runtime`` imports ``torch`` only in its GPU-only modules
   (``RUNTIME_TORCH_ALLOWED``), and ``spconv`` nowhere;
4. ``bevdeploy.data`` imports neither ``bevdeploy.model`` nor ``bevdeploy.runtime``;
5. ``bevdeploy.model`` does not import ``bevdeploy.runtime``.

That the CPU path really runs without torch is checked by executing it: a subprocess runs
``bevdeploy infer`` on the tiny package with the CPU pipeline and lists the forbidden modules it
loaded (``tests/runtime/test_pipeline.py::test_infer_with_a_package_is_torch_free_and_writes_its_outputs``;
also ``test_importing_the_runtime_does_not_import_torch`` there). The static rule 3 keeps the
imports that could break it in the few modules that only the GPU backends load.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
PACKAGE = "bevdeploy"

# Package A must not import package B (each name covers its submodules).
FORBIDDEN: tuple[tuple[str, str], ...] = (
    ("bevdeploy.runtime", "bevdeploy.model"),
    ("bevdeploy.runtime", "bevdeploy.export"),
    ("bevdeploy.runtime", "bevdeploy.train"),
    ("bevdeploy.data", "bevdeploy.model"),
    ("bevdeploy.data", "bevdeploy.runtime"),
    ("bevdeploy.model", "bevdeploy.runtime"),
)

# The runtime's GPU-only modules: loaded by the torch-cuda / TensorRT backends, the CUDA schedule
# and the Triton kernels only, never by the CPU pipeline. Only these may import torch.
RUNTIME_TORCH_ALLOWED: tuple[str, ...] = (
    "bevdeploy.runtime.backends.torch_cuda",  # PyTorch-CUDA runner
    "bevdeploy.runtime.backends.onnx_torch",  # ONNX graphs → torch modules for that runner
    "bevdeploy.runtime.backends.gpu",  # GPU backend options and runner construction
    "bevdeploy.runtime.backends.tensorrt",  # TensorRT runner (device buffers are torch tensors)
    "bevdeploy.runtime.devices",  # torch device checks; imports torch inside its functions
    "bevdeploy.runtime.kernels.cuda",  # Triton kernels on torch tensors
    "bevdeploy.runtime.kernels.cuda.*",
    "bevdeploy.runtime.scn.torch_executor",  # the SCN on torch (GPU machines have no spconv)
    "bevdeploy.runtime.schedules.cuda",  # the CUDA schedule: streams, graphs, device buffers
)
RUNTIME_FORBIDDEN_EVERYWHERE = ("spconv",)


@dataclass
class ImportGraph:
    """Internal edges (module → bevdeploy modules it imports) and the top-level external
    packages each module imports."""

    edges: dict[str, set[str]] = field(default_factory=dict)
    external: dict[str, set[str]] = field(default_factory=dict)

    def add(self, module: str, imports: Iterable[str] = (), external: Iterable[str] = ()) -> None:
        self.edges.setdefault(module, set()).update(imports)
        self.external.setdefault(module, set()).update(external)


def _module_name(path: Path, src: Path) -> tuple[str, bool]:
    parts = list(path.relative_to(src).with_suffix("").parts)
    is_package = parts[-1] == "__init__"
    if is_package:
        parts = parts[:-1]
    return ".".join(parts), is_package


def build_graph(src: Path = SRC, package: str = PACKAGE) -> ImportGraph:
    """Every ``import`` / ``from … import`` anywhere in every module of ``package``."""
    files = sorted((src / package).rglob("*.py"))
    names = {_module_name(f, src)[0] for f in files}
    graph = ImportGraph()
    for path in files:
        module, is_package = _module_name(path, src)
        this_package = module if is_package else module.rpartition(".")[0]
        internal: set[str] = set()
        external: set[str] = set()

        def target(name: str) -> None:
            if name == package or name.startswith(package + "."):
                # the longest prefix that is a module of the tree
                while name not in names and "." in name:
                    name = name.rpartition(".")[0]
                internal.add(name)
            else:
                external.add(name.split(".")[0])

        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    target(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = this_package
                    for _ in range(node.level - 1):
                        base = base.rpartition(".")[0]
                    base = f"{base}.{node.module}" if node.module else base
                else:
                    base = node.module or ""
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    target(candidate if candidate in names else base)
        internal.discard(module)
        graph.add(module, internal, external)
    return graph


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def find_cycles(edges: Mapping[str, set[str]]) -> list[list[str]]:
    """One shortest cycle per strongly connected component of more than one module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []
    counter = 0

    def strongconnect(v: str) -> None:  # Tarjan, iterative over the successors
        nonlocal counter
        work = [(v, iter(sorted(edges.get(v, ()))))]
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        while work:
            node, successors = work[-1]
            advanced = False
            for w in successors:
                if w not in index:
                    index[w] = low[w] = counter
                    counter += 1
                    stack.append(w)
                    on_stack.add(w)
                    work.append((w, iter(sorted(edges.get(w, ())))))
                    advanced = True
                    break
                if w in on_stack:
                    low[node] = min(low[node], index[w])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == node:
                        break
                if len(component) > 1:
                    components.append(component)

    for v in sorted(edges):
        if v not in index:
            strongconnect(v)

    cycles = []
    for component in components:
        start = min(component)
        # breadth-first inside the component back to ``start``
        paths = {start: [start]}
        queue = [start]
        found: list[str] | None = None
        while queue and found is None:
            node = queue.pop(0)
            for w in sorted(edges.get(node, ())):
                if w == start:
                    found = paths[node] + [start]
                    break
                if w in component and w not in paths:
                    paths[w] = paths[node] + [w]
                    queue.append(w)
        cycles.append(found or sorted(component))
    return cycles


def violations(graph: ImportGraph) -> list[str]:
    """Every broken rule, one line each."""
    found = [" → ".join(cycle) for cycle in find_cycles(graph.edges)]
    found = [f"cycle: {c}" for c in found]
    for module, imports in sorted(graph.edges.items()):
        for a, b in FORBIDDEN:
            if _within(module, a):
                found += [f"{module} imports {m} ({a} must not import {b})"
                          for m in sorted(imports) if _within(m, b)]
    for module, external in sorted(graph.external.items()):
        if not _within(module, "bevdeploy.runtime"):
            continue
        if "torch" in external and not any(fnmatchcase(module, p) for p in RUNTIME_TORCH_ALLOWED):
            found.append(f"{module} imports torch (only the runtime's GPU-only modules may: "
                         f"RUNTIME_TORCH_ALLOWED)")
        found += [f"{module} imports {name} (the runtime never does)"
                  for name in RUNTIME_FORBIDDEN_EVERYWHERE if name in external]
    return found


# ------------------------------------------------------------------------------- the real tree


def test_the_source_tree_keeps_the_import_rules():
    graph = build_graph()
    assert len(graph.edges) > 100  # the whole package was read
    problems = violations(graph)
    assert not problems, "import rules broken (docs/architecture.md#import-rules):\n" + \
        "\n".join(problems)


def test_the_allowed_torch_modules_exist():
    """An entry of RUNTIME_TORCH_ALLOWED that matches no module is a stale exemption."""
    modules = build_graph().edges
    stale = [p for p in RUNTIME_TORCH_ALLOWED if not any(fnmatchcase(m, p) for m in modules)]
    assert not stale


# ------------------------------------------------------------------- the checker catches breaks


def _clean_graph() -> ImportGraph:
    graph = ImportGraph()
    graph.add("bevdeploy.presets")
    graph.add("bevdeploy.data.frame", ["bevdeploy.presets"], ["numpy"])
    graph.add("bevdeploy.model.bevfusion", ["bevdeploy.data.frame"], ["torch"])
    graph.add("bevdeploy.runtime.stages.depth", ["bevdeploy.data.frame"], ["numpy"])
    graph.add("bevdeploy.runtime.kernels.cuda.depth", ["bevdeploy.presets"], ["torch", "triton"])
    graph.add("bevdeploy.runtime.schedules.cuda", ["bevdeploy.runtime.stages.depth"], ["torch"])
    return graph


def test_the_checker_passes_a_clean_graph():
    assert violations(_clean_graph()) == []


def test_the_checker_reports_each_kind_of_break():
    graph = _clean_graph()
    graph.add("bevdeploy.runtime.stages.depth", ["bevdeploy.model.bevfusion"])  # runtime → model
    graph.add("bevdeploy.data.frame", ["bevdeploy.runtime.stages.depth"])  # data → runtime
    graph.add("bevdeploy.runtime.stages.depth", external=["torch", "spconv"])  # CPU stage
    problems = violations(graph)
    assert any(p.startswith("cycle:") and "bevdeploy.data.frame" in p for p in problems)
    assert ("bevdeploy.runtime.stages.depth imports bevdeploy.model.bevfusion "
            "(bevdeploy.runtime must not import bevdeploy.model)") in problems
    assert ("bevdeploy.data.frame imports bevdeploy.runtime.stages.depth "
            "(bevdeploy.data must not import bevdeploy.runtime)") in problems
    assert any(p.startswith("bevdeploy.runtime.stages.depth imports torch") for p in problems)
    assert "bevdeploy.runtime.stages.depth imports spconv (the runtime never does)" in problems


def test_cycles_are_reported_with_their_path():
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"e"}}
    assert find_cycles(edges) == [["a", "b", "c", "a"]]  # a self-import is not a cycle


def test_the_collector_sees_every_kind_of_import(tmp_path):
    """Module level, relative, inside a function and under TYPE_CHECKING all make edges; a
    forbidden one added to a copy of a real rule breaks the check."""
    pkg = tmp_path / "bevdeploy"
    for sub in ("", "runtime", "runtime/stages", "model", "data"):
        (pkg / sub).mkdir(parents=True, exist_ok=True)
        (pkg / sub / "__init__.py").write_text("")
    (pkg / "presets.py").write_text("import numpy as np\n")
    (pkg / "data" / "frame.py").write_text("from ..presets import np\n")
    (pkg / "model" / "net.py").write_text("import torch\nfrom bevdeploy.data import frame\n")
    (pkg / "runtime" / "stages" / "depth.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "from bevdeploy.data.frame import np\n"
        "if TYPE_CHECKING:\n    from bevdeploy.model.net import torch\n"
        "def lazy():\n    import torch\n    from .. import stages\n")
    graph = build_graph(tmp_path)
    assert graph.edges["bevdeploy.data.frame"] == {"bevdeploy.presets"}
    assert graph.edges["bevdeploy.model.net"] == {"bevdeploy.data.frame"}
    assert graph.edges["bevdeploy.runtime.stages.depth"] == {
        "bevdeploy.data.frame", "bevdeploy.model.net", "bevdeploy.runtime.stages"}
    assert "torch" in graph.external["bevdeploy.runtime.stages.depth"]
    problems = violations(graph)
    assert ("bevdeploy.runtime.stages.depth imports bevdeploy.model.net "
            "(bevdeploy.runtime must not import bevdeploy.model)") in problems
    assert any(p.startswith("bevdeploy.runtime.stages.depth imports torch") for p in problems)
