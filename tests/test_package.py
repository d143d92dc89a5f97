"""The package's layout: no import circles, no import running back up the floors
(bert/ -> layers/ and checkpoint -> pipeline, pretraining/ -> cli/), and every module importable alone."""

import ast
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path
from typing import Dict, List, Set

import spacy_bert_plugin

ROOT = Path(spacy_bert_plugin.__file__).parent
PACKAGE = "spacy_bert_plugin"


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}


def imported_modules(name: str) -> Set[str]:
    """The package's modules that `name` imports, at the top or inside a function."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")
            base = base[: len(base) - node.level + 1] if node.level else []
            stem = ".".join(base + ([node.module] if node.module else []))
            # `from . import x` imports the module x; `from .x import y` imports x (y is a name in it).
            targets = [f"{stem}.{alias.name}" for alias in node.names if f"{stem}.{alias.name}" in MODULES]
            targets = targets or [stem]
        else:
            continue
        found.update(target for target in targets if target in MODULES and target != name)
    return found


GRAPH: Dict[str, Set[str]] = {name: imported_modules(name) for name in MODULES}


def find_cycle() -> List[str]:
    state: Dict[str, str] = {}
    stack: List[str] = []

    def visit(name: str) -> List[str]:
        state[name] = "open"
        stack.append(name)
        for target in sorted(GRAPH[name]):
            if state.get(target) == "open":
                return stack[stack.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[name] = "done"
        stack.pop()
        return []

    for name in MODULES:
        if name not in state:
            cycle = visit(name)
            if cycle:
                return cycle
    return []


def test_the_graph_sees_the_imports():
    assert "spacy_bert_plugin.pretraining.settings" in GRAPH["spacy_bert_plugin.pretraining.build"]
    assert "spacy_bert_plugin.pretraining.masking" in GRAPH["spacy_bert_plugin.pretraining.rtd"]
    assert "spacy_bert_plugin.bert.encoder" in GRAPH["spacy_bert_plugin.bert.heads"]


def test_no_import_circle():
    assert find_cycle() == []


FLOORS = ["bert", "layers", "pipeline", "pretraining", "cli"]


def floor(name: str) -> int:
    part = name.split(".")[1] if "." in name else ""
    if part == "errors":  # the error family: every floor raises them
        return -1
    # checkpoint.py, pieces.py and other top-level modules sit beside layers/: above bert/,
    # below the pipeline.
    return FLOORS.index(part) if part in FLOORS else 1


def test_no_import_runs_back_up():
    upward = [
        f"{name} -> {target}"
        for name, targets in GRAPH.items()
        for target in targets
        if name != PACKAGE and target != PACKAGE and floor(target) > floor(name)
    ]
    assert upward == []


def test_each_module_imports_alone():
    """Each module first in a fresh import of the package (the heavy libraries stay loaded)."""
    script = f"""
import importlib, sys
for name in {sorted(MODULES)!r}:
    for loaded in [m for m in sys.modules if m == {PACKAGE!r} or m.startswith({PACKAGE + "."!r})]:
        del sys.modules[loaded]
    importlib.import_module(name)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_registered_once_through_entry_points():
    """Architectures and objectives come from setup.cfg's entry points only (as spaCy's plugins
    do), so none is registered twice under different names, and each target exists."""
    decorated = [name for name, path in MODULES.items() if "@registry." in path.read_text(encoding="utf8")]
    assert decorated == []
    groups = ("spacy_architectures", "spacy_bert_objectives", "spacy_factories", "spacy_cli", "spacy_readers")
    for entry in (entry for group in groups for entry in entry_points(group=group)):
        if entry.value.startswith(PACKAGE):
            assert callable(entry.load()), entry
