"""The package's architecture, checked: imports go down the layers only, no import circles, no
module over 600 lines.

Every `import` and `from ... import` in src/carid counts, also those inside functions and under
`if TYPE_CHECKING:` (a lazy import is still a dependency). The layers, lowest first:

    0  the torch-free base: config boxes taxonomy images preprocess files errors reporting embedding
    1  artifacts/     file formats and folders
    2  models/, data/ (the two never import each other)
    3  runtime/       predicting (the slim install's path)
    4  enroll/, explain/
    5  training/
    6  evaluation/
    7  export
    8  serve/, pipeline
    9  cli/
   10  __main__

A module may import its own package (a top-level module is its own package; the base modules are
one) and any package on a lower layer, never one on its own layer or above.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

import pytest

import carid

PACKAGE_ROOT = Path(carid.__file__).parent
MAX_LINES = 600

BASE = ("config", "boxes", "taxonomy", "images", "preprocess", "files", "errors", "reporting", "embedding")
# what the settings mean (help, did-you-mean, data paths); the detector's settings
BASE += ("config_help", "config_detect")
LAYERS: dict[str, int] = {
    **{name: 0 for name in (*BASE, "__init__")},
    "artifacts": 1,
    "models": 2,
    "data": 2,
    "runtime": 3,
    "enroll": 4,
    "explain": 4,
    "training": 5,
    "evaluation": 6,
    "export": 7,
    "export_detector": 8,  # builds on export (its parity machinery); cli uses it
    "export_quantize": 8,  # builds on export (its finish hook); cli uses it
    "serve": 8,
    "pipeline": 8,
    "scale": 8,  # batch prediction on Ray: runtime + predict_io, nothing above
    "cli": 9,
    "__main__": 10,
}


def module_name(path: Path, root: Path = PACKAGE_ROOT) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def import_graph(root: Path = PACKAGE_ROOT) -> dict[str, set[str]]:
    """{module: the carid modules it imports}; `from a import b` counts as importing a.b when a.b
    is a module, else a."""
    files = {module_name(path, root): path for path in sorted(root.rglob("*.py"))}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative import
                    anchor = name.split(".") if is_package else name.split(".")[:-1]
                    anchor = anchor[: len(anchor) - (node.level - 1)]
                    base = ".".join([*anchor, base] if base else anchor)
                for alias in node.names:
                    candidate = f"{base}.{alias.name}"
                    targets.add(candidate if candidate in files else base)
        graph[name] = {target for target in targets if target in files and target != name}
    return graph


def package_of(module: str) -> str:
    """The layer unit a module belongs to: "runtime" for carid.runtime.predictor, "export" for
    carid.export, "base" for every base module."""
    parts = module.split(".")
    unit = parts[1] if len(parts) > 1 else "__init__"
    return "base" if unit in BASE or unit == "__init__" else unit


def layer_of(module: str, layers: Mapping[str, int] = LAYERS) -> int:
    parts = module.split(".")
    unit = parts[1] if len(parts) > 1 else "__init__"
    if unit not in layers:
        raise KeyError(f"{module}: its package {unit!r} has no layer; add it to LAYERS")
    return layers[unit]


def layer_violations(graph: Mapping[str, Iterable[str]], layers: Mapping[str, int] = LAYERS) -> list[str]:
    """Every import of a package on the same layer (other than its own) or a higher one."""
    found = []
    for module, targets in sorted(graph.items()):
        for target in sorted(targets):
            if package_of(target) == package_of(module):
                continue
            if layer_of(target, layers) >= layer_of(module, layers):
                found.append(
                    f"{module} (layer {layer_of(module, layers)}) imports {target} "
                    f"(layer {layer_of(target, layers)})"
                )
    return found


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The import circles: strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


# --- the checks can fail ---------------------------------------------------------------------------


def test_a_circle_is_found() -> None:
    graph = {"carid.a": {"carid.b"}, "carid.b": {"carid.c"}, "carid.c": {"carid.a"}, "carid.d": {"carid.a"}}
    assert cycles(graph) == [["carid.a", "carid.b", "carid.c"]]
    assert cycles({"carid.a": {"carid.b"}, "carid.b": set()}) == []


def test_an_import_up_the_layers_or_across_one_is_found() -> None:
    graph = {
        "carid.runtime.predictor": {
            "carid.evaluation.metrics",
            "carid.artifacts.bundle",
            "carid.runtime.tta",
        },
        "carid.data.curate": {"carid.models.nocar"},
        "carid.serve.api": {"carid.runtime.predictor"},
    }
    assert layer_violations(graph) == [
        "carid.data.curate (layer 2) imports carid.models.nocar (layer 2)",
        "carid.runtime.predictor (layer 3) imports carid.evaluation.metrics (layer 6)",
    ]


def test_relative_and_package_imports_resolve_to_modules(tmp_path: Path) -> None:
    root = tmp_path / "carid"
    (root / "runtime").mkdir(parents=True)
    (root / "__init__.py").write_text("", encoding="utf-8")
    (root / "runtime" / "__init__.py").write_text("from . import tta\n", encoding="utf-8")
    (root / "runtime" / "tta.py").write_text("def f():\n    from ..files import x\n", encoding="utf-8")
    (root / "files.py").write_text("from carid.runtime import tta\nimport carid\n", encoding="utf-8")
    graph = import_graph(root)
    assert graph == {
        "carid": set(),
        "carid.runtime": {"carid.runtime.tta"},
        "carid.runtime.tta": {"carid.files"},
        "carid.files": {"carid.runtime.tta", "carid"},
    }
    assert cycles(graph) == [["carid.files", "carid.runtime.tta"]]


# --- the package keeps them ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_every_package_has_a_layer(graph: dict[str, set[str]]) -> None:
    for module in graph:
        layer_of(module)


def test_no_import_circle(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_imports_go_down_the_layers_only(graph: dict[str, set[str]]) -> None:
    assert layer_violations(graph) == []


def test_the_runtime_and_the_server_import_nothing_of_evaluation_or_training(
    graph: dict[str, set[str]],
) -> None:
    offending = [
        f"{module} imports {target}"
        for module, targets in graph.items()
        if package_of(module) in ("runtime", "serve")
        for target in targets
        if package_of(target) in ("evaluation", "training")
    ]
    assert offending == []


def test_no_module_is_over_600_lines() -> None:
    long = {
        str(path.relative_to(PACKAGE_ROOT)): count
        for path in PACKAGE_ROOT.rglob("*.py")
        if (count := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}
