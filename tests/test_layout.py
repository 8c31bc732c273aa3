"""The package's layering: the layers of docs/architecture.md cover the tree, no import runs back up a
layer or closes a circle, the model stack stays plain PyTorch, and no module grows past 500 lines without
saying why at its top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "halo_lab"
RUNNER_LIBS = ("lightning", "lightning_fabric", "pytorch_lightning", "hydra", "omegaconf")


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PKG.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in PKG.rglob("*.py")}


def test_model_imports_no_runner_library():
    code = (
        "import sys, halo_lab.model, halo_lab.checkpoint.weights\n"
        f"bad = sorted(m for m in sys.modules if m.split('.')[0] in {RUNNER_LIBS!r})\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"halo_lab.model loads {out.stdout.strip()}"


def _imports(name: str) -> set[str]:
    """halo_lab modules that ``name`` imports anywhere (function-level imports included)."""
    tree = ast.parse(MODULES[name].read_text())
    is_pkg = MODULES[name].name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                pkg = name.split(".") if is_pkg else name.split(".")[:-1]
                base = ".".join(pkg[: len(pkg) - node.level + 1] + ([base] if base else []))
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names]
        out |= {t for t in targets if t in MODULES and t != "halo_lab" and t != name}
    return out


def test_no_import_cycles():
    graph = {name: _imports(name) for name in MODULES}
    state: dict[str, int] = {}

    def visit(n: str, path: list[str]) -> None:
        state[n] = 1
        for m in sorted(graph[n]):
            if state.get(m) == 1:
                raise AssertionError("import cycle: " + " -> ".join([*path[path.index(m) :], m]))
            if m not in state:
                visit(m, [*path, m])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


DOC = PKG.parent / "docs" / "architecture.md"


def _layers() -> list[tuple[str, list[str]]]:
    """The layers of docs/architecture.md's block, bottom first: (name, packages and modules)."""
    text = DOC.read_text()
    block = text[text.index("```\nlayer") + 4 : text.index("```", text.index("```\nlayer") + 4)]
    rows = [line.split(None, 1) for line in block.strip().splitlines()[1:]]
    return [(name, [p.strip().rstrip("/") for p in parts.split("·")]) for name, parts in reversed(rows)]


def _layer_of() -> dict[str, int]:
    """Each halo_lab module -> the index of its layer (0 = the bottom)."""
    owners = {f"halo_lab.{part}": i for i, (_, parts) in enumerate(_layers()) for part in parts}
    out = {}
    for name in MODULES:
        if name == "halo_lab":
            continue
        top = ".".join(name.split(".")[:2])
        assert top in owners, f"{name}: in no layer of docs/architecture.md"
        out[name] = owners[top]
    return out


def test_the_layers_of_the_architecture_page_cover_the_tree_exactly():
    named = {part for _, parts in _layers() for part in parts}
    tree = {p.stem for p in PKG.glob("*.py") if p.name != "__init__.py"}
    tree |= {p.name for p in PKG.iterdir() if p.is_dir() and (p / "__init__.py").is_file()}
    assert named == tree, f"only in the doc: {sorted(named - tree)}; only in the tree: {sorted(tree - named)}"
    doc = DOC.read_text()
    for name, path in MODULES.items():  # every module is named on the page (not __init__ / __main__)
        if not path.name.startswith("__"):
            assert f"{path.stem}.py" in doc, f"docs/architecture.md does not mention {name} ({path.name})"


def test_no_module_imports_a_higher_layer():
    """A lower layer never imports a higher one (function-level imports included): 0 arrows back up."""
    layer = _layer_of()
    names = [name for name, _ in _layers()]
    bad = [
        f"{mod} ({names[layer[mod]]}) imports {dep} ({names[layer[dep]]})"
        for mod in layer
        for dep in _imports(mod)
        if dep in layer and layer[dep] > layer[mod]
    ]
    assert not bad, "imports that run back up:\n" + "\n".join(sorted(bad))


MAX_LINES = 500
REASON = "# Longer than 500 lines because"


def test_modules_stay_small_or_say_why():
    """No module over 500 lines unless one of its first lines states why, in so many words."""
    for name, path in MODULES.items():
        lines = path.read_text().splitlines()
        if len(lines) > MAX_LINES:
            assert any(line.startswith(REASON) for line in lines[:10]), (
                f"{name}: {len(lines)} lines; split it, or say why in a line starting {REASON!r} at its top"
            )


def test_one_arch_table():
    """model.ARCHS is the table; compat's is the names config.json stores, and must agree with it."""
    from halo_lab.checkpoint import compat
    from halo_lab.model import ARCHS

    assert {arch: cls.__name__ for arch, cls in ARCHS.items()} == compat.CLASS_BY_ARCH


def test_architecture_page_names_every_config_group_and_module():
    """docs/architecture.md maps each config group to its consumer, and each runner module to its job."""
    doc = DOC.read_text()
    for group in sorted(p.name for p in (PKG.parent / "conf").iterdir() if p.is_dir()):
        assert f"| `{group}`" in doc, f"docs/architecture.md: no row for the config group {group}"
    for name in MODULES:
        if name.startswith(("halo_lab.runner.", "halo_lab.device.")) and not name.endswith("__init__"):
            assert name.split(".")[-1] in doc, f"docs/architecture.md does not mention {name}"
