"""The package's layering: the model stack stays plain PyTorch, modules import each other without
cycles, and no module grows past about 400 lines without saying why at its top."""

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


# The runner side and the tools (the model stack and data are checked by their own owners' reviews).
SIZED = ("halo_lab.runner", "halo_lab.device", "halo_lab.report", "halo_lab.hub", "halo_lab.weights",
         "halo_lab.export", "halo_lab.train", "halo_lab.compat", "halo_lab.utils")  # fmt: skip


def test_modules_stay_small_or_say_why():
    for name, path in MODULES.items():
        if not name.startswith(SIZED):
            continue
        lines = path.read_text().splitlines()
        if len(lines) > 420:
            head = "\n".join(lines[:30]).lower()
            assert "lines" in head or "one module" in head, (
                f"{name}: {len(lines)} lines, no reason at its top"
            )


def test_one_arch_table():
    """model.ARCHS is the table; compat's is the names config.json stores, and must agree with it."""
    from halo_lab.checkpoint import compat
    from halo_lab.model import ARCHS

    assert {arch: cls.__name__ for arch, cls in ARCHS.items()} == compat.CLASS_BY_ARCH


def test_architecture_page_names_every_config_group_and_module():
    """docs/architecture.md maps each config group to its consumer, and each runner module to its job."""
    doc = (PKG.parent / "docs" / "architecture.md").read_text()
    for group in sorted(p.name for p in (PKG.parent / "conf").iterdir() if p.is_dir()):
        assert f"| `{group}`" in doc, f"docs/architecture.md: no row for the config group {group}"
    for name in MODULES:
        if name.startswith(("halo_lab.runner.", "halo_lab.device.")) and not name.endswith("__init__"):
            assert name.split(".")[-1] in doc, f"docs/architecture.md does not mention {name}"
