"""The package's layers point one way (ARCHITECTURE.md): every import, including those inside functions,
goes from a room to a room below it, and no modules import each other in a circle."""

from __future__ import annotations

import ast
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pytest

import ddpm

SRC = Path(ddpm.__file__).resolve().parent

# Top to bottom. A room may import itself and any room of a LOWER layer, nothing else.
LAYERS: list[tuple[str, ...]] = [
    ("cli",),
    ("server", "editing"),  # the web UI and editing real images, both built on pipelines
    ("pipelines",),
    ("training", "evaluation"),
    ("data",),
    ("io",),
    ("conditioning",),
    ("models",),
    ("nn", "text", "sampling", "objectives", "degradations", "guidance"),
    ("process",),
    ("schedules", "noise"),
    ("config", "configs"),
]
RANK = {room: len(LAYERS) - i for i, rooms in enumerate(LAYERS) for room in rooms}
# Same-layer rooms that may import one another (still one way: the table says who imports whom).
SIDEWAYS = {("sampling", "guidance"), ("sampling", "degradations")}


ROOMS = {p.name for p in SRC.iterdir() if (p / "__init__.py").is_file()}
ROOMS |= {p.stem for p in SRC.glob("*.py") if p.stem != "__init__"}


def room_of(module: str) -> str:
    """'ddpm.io.sd' -> 'io'; 'ddpm' itself, or a name it defines (`from .. import __version__`) -> ''."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else ""


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every `ddpm.…` module `path` imports, at any depth of its code (`from . import x` resolved)."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "ddpm")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "ddpm":
                continue
            if node.module is None or target == "ddpm":  # `from . import x`: x is a module of the package
                found.update(f"{target}.{a.name}" for a in node.names)
            else:
                found.add(target)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports(p) for p in sorted(SRC.rglob("*.py"))}


def test_every_room_is_in_the_layer_table():
    assert ROOMS - set(RANK) == set(), "add the new room to LAYERS (and to ARCHITECTURE.md)"


def test_imports_point_down_the_layers():
    wrong = []
    for module, targets in graph().items():
        a = room_of(module)
        for target in targets:
            b = room_of(target)
            if not a or not b or a == b or (a, b) in SIDEWAYS:
                continue
            if RANK[b] >= RANK[a]:
                wrong.append(f"{module} -> {target}")
    assert wrong == [], "imports against the layers (ARCHITECTURE.md):\n" + "\n".join(sorted(wrong))


def test_no_import_cycles_between_modules():
    g = graph()
    modules = set(g)

    def resolve(target: str) -> str | None:  # `from ddpm.io import x` imports the package ddpm.io
        while target and target not in modules:
            target = target.rpartition(".")[0]
        return target or None

    edges = defaultdict(set)
    for module, targets in g.items():
        for target in targets:
            t = resolve(target)
            # a package's __init__ re-exporting its own modules is not a cycle of the design
            if t and t != module and not t.startswith(module + ".") and not module.startswith(t + "."):
                edges[module].add(t)
    cycles, state = [], {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack)
        stack.pop()
        state[node] = "done"

    for m in sorted(modules):
        if m not in state:
            visit(m, [])
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    code = "from . import a\nfrom ..io.sd import x\n\ndef f():\n    from ddpm.training import loop\n"
    path = SRC / "models" / "_probe_for_test.py"
    path.write_text(code, encoding="utf-8")
    try:
        assert imports(path) == {"ddpm.models.a", "ddpm.io.sd", "ddpm.training"}
    finally:
        path.unlink()


@pytest.mark.parametrize("room", ["config", "data"])
def test_data_and_config_import_no_model_code(room):
    allowed = {"", "config", "configs", room}
    for module, targets in graph().items():
        if room_of(module) == room:
            assert {room_of(t) for t in targets} <= allowed, module
    code = f"import sys, ddpm.{room}; print('torch' in sys.modules)"
    if room == "config":  # the whole config layer, with a config loaded, stays torch-free
        code = "import sys, ddpm.config as c; c.dump_config(c.Config()); print('torch' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert out.stdout.strip() == "False"
