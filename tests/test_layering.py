"""The package's layers: every import points down a layer (or stays in its own folder),
and no modules import each other in a circle. The layout is README's "How the code is
laid out"; this test keeps it true.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import backworks

PACKAGE = Path(backworks.__file__).resolve().parent

# The floor of each top-level module or folder of backworks/. A module may import from
# a lower floor, or from its own folder; never from its own floor's other folders, never
# from above. The package's face (backworks/__init__.py) is floor 0 and imports nothing.
LAYERS = {
    "errors": 1,
    "names": 1,
    "logs": 1,
    "spawn": 1,
    "httpspec": 1,
    "tracing": 2,  # a leaf beside abi and config: it needs only the error classes
    "abi": 2,
    "config": 2,
    "plugins": 3,
    "runtime": 3,
    "isolation": 4,
    "lifecycle": 5,
    "http": 6,
    "testing": 6,  # a plugin author's harness: builds a plugin as the lifecycle does
    "ops": 7,
    "server": 8,
    "cli": 9,
    "__main__": 10,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def room(module: str) -> str:
    """The top-level module or folder of backworks/ that `module` belongs to."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def imports_of(module: str) -> Iterator[tuple[str, int]]:
    """The backworks modules `module` imports, with the line of each import.

    Every import counts, wherever it stands (under TYPE_CHECKING, inside a function):
    each is an arrow of the architecture. `from backworks.x import y` names the module
    `backworks.x.y` when that is a module, else `backworks.x`. A submodule's parent
    package is not counted: Python imports it, but it is the submodule that is used.
    """
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                yield (sub if sub in MODULES else base), node.lineno


def graph() -> dict[str, dict[str, int]]:
    """module -> {imported backworks module: line}."""
    return {
        module: {
            target: line
            for target, line in imports_of(module)
            if target == "backworks" or target.startswith("backworks.")
        }
        for module in MODULES
    }


def circles(edges: dict[str, dict[str, int]]) -> list[list[str]]:
    """The strongly connected groups of two or more modules (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in edges.get(node, {}):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in edges.get(node, {}):
                found.append(sorted(group))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_every_module_of_the_package_has_a_floor() -> None:
    missing = sorted({room(m) for m in MODULES if m != "backworks"} - LAYERS.keys())
    assert not missing, f"give these a floor in LAYERS (and in README's layout): {missing}"


def test_the_package_face_imports_nothing_of_ours() -> None:
    assert graph()["backworks"] == {}


def test_every_import_points_down_a_floor_or_stays_in_its_folder() -> None:
    wrong = []
    for module, targets in graph().items():
        if module == "backworks":
            continue
        here = room(module)
        for target, line in targets.items():
            there = room(target)
            if target == "backworks" or there == here:
                continue
            if LAYERS[there] >= LAYERS[here]:
                wrong.append(
                    f"{module} (floor {LAYERS[here]}) imports {target} (floor "
                    f"{LAYERS[there]}) at line {line}"
                )
    assert not wrong, "imports that do not point down:\n" + "\n".join(wrong)


def test_no_modules_import_each_other_in_a_circle() -> None:
    edges = graph()
    found = []
    for group in circles(edges):
        ties = [f"{a} -> {b}" for a in group for b in edges[a] if b in group]
        found.append(", ".join(ties))
    assert not found, "import circles:\n" + "\n".join(found)


def test_the_checks_see_a_circle_and_an_upward_import() -> None:
    """The checks themselves: a made-up graph with one circle is caught, naming both."""
    edges = {"a": {"b": 1}, "b": {"a": 2}, "c": {"a": 3}}
    assert circles(edges) == [["a", "b"]]
    assert room("backworks.http.aio.keys") == "http"
    assert LAYERS[room("backworks.ops.views")] > LAYERS[room("backworks.http.aio.keys")]


# Where aiohttp may be imported: its adapter in http/aio/, the operator's routes, and
# the composition root. The HTTP core and the lane never see it.
AIOHTTP_ROOMS = ("backworks.http.aio", "backworks.ops", "backworks.server", "backworks.cli")


def third_party_imports(module: str) -> Iterator[tuple[str, int]]:
    """The top-level names of everything `module` imports, with their lines."""
    tree = ast.parse(MODULES[module].read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name.split(".")[0], node.lineno
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            yield node.module.split(".")[0], node.lineno


def test_only_the_aiohttp_adapter_ops_and_server_import_aiohttp() -> None:
    wrong = [
        f"{module} imports aiohttp at line {line}"
        for module in MODULES
        if not module.startswith(AIOHTTP_ROOMS)
        for name, line in third_party_imports(module)
        if name == "aiohttp"
    ]
    assert not wrong, "\n".join(wrong)


def test_the_http_core_imports_neither_engine() -> None:
    """http/ outside lane/ and aio/ is the core both engines call; it calls neither."""
    engines = ("backworks.http.lane", "backworks.http.aio")
    wrong = [
        f"{module} imports {target} at line {line}"
        for module, targets in graph().items()
        if module.startswith("backworks.http.") and not module.startswith(engines)
        for target, line in targets.items()
        if target.startswith(engines)
    ]
    assert not wrong, "\n".join(wrong)
