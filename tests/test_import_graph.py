"""No import circle in segbook: data and models below training, training below the command line.

A circle between two modules works only as long as one side imports the other
late (inside a function) or after the names it needs exist, and it breaks
when someone tidies the imports. So the graph is read from the source with
``ast``: every ``import`` statement, top-level or inside a function, relative
ones resolved, and ``pkg/__init__.py`` standing for the module ``pkg``.
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import segbook

PACKAGE_DIR = Path(segbook.__file__).parent


def module_names(root: Path, package: str) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file below ``root`` (the folder of ``package``)."""
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = [package, *path.relative_to(root).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(parts)] = path
    return names


def _base(module: str, path: Path, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` reads from (``from ..x import y`` in a.b.c is a.x)."""
    if node.level == 0:
        return node.module or ""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    anchor = package[:len(package) - (node.level - 1)]
    return ".".join(anchor + ([node.module] if node.module else []))


def _owner(name: str, modules: dict[str, Path]) -> str | None:
    """The longest known module that ``name`` is or lies inside (``segbook.data.voc.X`` -> ``segbook.data.voc``)."""
    parts = name.split(".")
    for end in range(len(parts), 0, -1):
        if ".".join(parts[:end]) in modules:
            return ".".join(parts[:end])
    return None


def import_graph(root: Path, package: str) -> dict[str, set[str]]:
    """Module -> the package's modules it imports, wherever in the file the import stands."""
    modules = module_names(root, package)
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for module, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _base(module, path, node)
                # ``from pkg import sub`` imports the module pkg.sub; ``from pkg import name`` imports pkg
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base
                           for alias in node.names]
            for target in targets:
                owner = _owner(target, modules)
                if owner is not None and owner != module:
                    graph[module].add(owner)
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One circle ``[a, b, ..., a]`` in ``graph``, or None; depth first, with the path on a stack."""
    state: dict[str, int] = {}  # 1 on the current path, 2 finished
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_segbook_has_no_import_circle() -> None:
    graph = import_graph(PACKAGE_DIR, "segbook")
    assert len(graph) > 30 and sum(map(len, graph.values())) > 60  # the whole package was read
    cycle = find_cycle(graph)
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_the_graph_has_the_arrows_the_layers_need() -> None:
    # Spot checks that the parser sees each kind of import: relative, absolute, parent-relative, lazy.
    graph = import_graph(PACKAGE_DIR, "segbook")
    assert "segbook.models.registry" in graph["segbook.models.fcn"]  # absolute: from segbook.models.registry import
    assert "segbook.data.voc" in graph["segbook.data.toy"]  # relative: from .voc import
    assert "segbook.settings" in graph["segbook.data.download"]  # parent-relative: from ..settings import
    assert "segbook.data" in graph["segbook.env"]  # lazy, inside a function
    assert "segbook.models" in graph["segbook.train.cli"] and "segbook.train.loop" in graph["segbook.train.cli"]
    assert "segbook.train.loop" in graph["segbook.train"] and "segbook.train.cli" not in graph["segbook.train.loop"]
    assert not any(m.startswith("segbook.models") for m in graph["segbook.data"])  # data below models
    assert not any(m.startswith("segbook.train") for m in graph if m.startswith(("segbook.models", "segbook.data"))
                   for m in graph[m])  # training above models and data


def _source(relative: str) -> str:
    return (PACKAGE_DIR / relative).read_text()


def test_the_training_package_keeps_each_concern_in_one_place() -> None:
    # segbook.train is what the chapters import: re-exports only. Every collective call lives in
    # train/distributed.py, and fit's loop has no branch on the process layout.
    tree = ast.parse(_source("train/__init__.py"))
    assert not [node.name for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.ClassDef))]
    for path in PACKAGE_DIR.rglob("*.py"):
        calls = re.findall(r"\b(?:dist|torch\.distributed)\.\w+\(", path.read_text())
        assert path.name == "distributed.py" or not calls, (path, calls)
    fit = next(node for node in ast.walk(ast.parse(_source("train/loop.py")))
               if isinstance(node, ast.FunctionDef) and node.name == "fit")
    branches = [ast.unparse(node.test) for node in ast.walk(fit) if isinstance(node, (ast.If, ast.IfExp))]
    assert not [b for b in branches if any(word in b for word in ("several", "world_size", "rank", "is_main"))]


def test_no_function_is_longer_than_60_lines() -> None:
    long = {f"{path.relative_to(PACKAGE_DIR)}:{node.name}": node.end_lineno - node.lineno + 1
            for path in PACKAGE_DIR.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno >= 60}
    assert not long, f"functions over 60 lines: {long}"


def test_environment_variables_are_read_in_two_modules_and_no_tool_is_named() -> None:
    readers = sorted(str(path.relative_to(PACKAGE_DIR)) for path in PACKAGE_DIR.rglob("*.py")
                     if "os.environ" in path.read_text() or "getenv" in path.read_text())
    assert readers == ["settings.py", "train/distributed.py"]
    for path in PACKAGE_DIR.rglob("*.py"):
        text = path.read_text().lower()
        assert "rehears" not in text and '"ci"' not in text, path  # the library never reads a tool's switch


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_circles_are_found_whatever_form_the_imports_take(tmp_path: Path) -> None:
    # The four circles segbook had, in miniature: a lazy import inside a function, a package whose
    # __init__ imports a submodule that imports the package, and relative imports across levels.
    _write(tmp_path / "pkg", {
        "__init__.py": "from .models import build\n",
        "cli.py": "from .train import fit\n",
        "train.py": "def main():\n    from .cli import run\n",
        "models/__init__.py": "from pkg.models.fcn import FCN\n",
        "models/fcn.py": "from pkg.models import register\n",
        "data/__init__.py": "from ..env import home\n",
        "env.py": "def f():\n    import pkg.data\n",
        "data/toy.py": "from .voc import IGNORE\n",
        "data/voc.py": "def g():\n    from . import toy\n",
    })
    graph = import_graph(tmp_path / "pkg", "pkg")
    assert graph["pkg.cli"] == {"pkg.train"} and graph["pkg.train"] == {"pkg.cli"}
    assert graph["pkg.models"] == {"pkg.models.fcn"} and graph["pkg.models.fcn"] == {"pkg.models"}
    assert graph["pkg.data"] == {"pkg.env"} and graph["pkg.env"] == {"pkg.data"}
    assert graph["pkg.data.toy"] == {"pkg.data.voc"} and graph["pkg.data.voc"] == {"pkg.data.toy"}
    assert graph["pkg"] == {"pkg.models"}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and len(cycle) == 3
    for a, b in zip(cycle, cycle[1:]):
        assert b in graph[a]  # a real path through the graph
    for pair in (("pkg.cli", "pkg.train"), ("pkg.models", "pkg.models.fcn"), ("pkg.data", "pkg.env"),
                 ("pkg.data.toy", "pkg.data.voc")):
        alone = {m: set() for m in graph}
        alone[pair[0]], alone[pair[1]] = {pair[1]}, {pair[0]}
        assert find_cycle(alone) is not None, pair  # each circle on its own is found
    graph["pkg.train"] = set()  # break every circle: none is left
    graph["pkg.models.fcn"] = set()
    graph["pkg.env"] = set()
    graph["pkg.data.voc"] = set()
    assert find_cycle(graph) is None


def test_long_circles_are_found() -> None:
    chain = {f"m{i}": {f"m{i + 1}"} for i in range(5)}
    assert find_cycle(chain) is None
    chain["m5"] = {"m2"}
    assert find_cycle(chain) == ["m2", "m3", "m4", "m5", "m2"]


def test_every_module_is_under_400_lines() -> None:
    long = {str(path.relative_to(PACKAGE_DIR)): n for path in PACKAGE_DIR.rglob("*.py")
            if (n := len(path.read_text().splitlines())) >= 400}
    assert not long, f"modules of 400 lines or more: {long}"
