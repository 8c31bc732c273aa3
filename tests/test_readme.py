"""The README's commands work as written: every `make` target it names exists, it says how to reach the
virtual environment before its first `python` command, and each `python -m halo_lab.train` /
`python -m halo_lab.eval` line of its command blocks composes (and the train ones validate) as written."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra

from halo_lab.runner.config import compose_config, validate_config

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text()
BLOCKS = re.findall(r"```bash\n(.*?)```", README, flags=re.S)
LINES = [line.split("  #")[0].strip() for block in BLOCKS for line in block.splitlines() if line.strip()]


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


def test_every_make_target_named_exists():
    rules = set(re.findall(r"^([a-z][a-z-]*):", (REPO / "Makefile").read_text(), flags=re.M))
    named = set(re.findall(r"`make ([a-z-]+)", README)) | {
        line.split()[1] for line in LINES if line.startswith("make ")
    }
    listed = re.search(r"`make help` lists every target: (.*?)\.\n", README, flags=re.S).group(1)
    named |= set(re.findall(r"`([a-z-]+)`", listed))
    assert named and named <= rules, f"README names make targets the Makefile lacks: {sorted(named - rules)}"


def test_the_environment_comes_before_the_first_python_command():
    first = README.index("python -m halo_lab")
    assert "source .venv/bin/activate" in README[:first] or ".venv/bin/python" in README[:first]


def _commands(module: str) -> list[list[str]]:
    out = []
    for line in LINES:
        words = shlex.split(re.sub(r"<[a-z]+>", "2026-01-01_00-00-00", line))  # <time>, <run>: placeholders
        if words[:3] == ["python", "-m", module]:
            out.append([w for w in words[3:] if w != "-m"])
    return out


@pytest.mark.parametrize("args", _commands("halo_lab.train"), ids=lambda a: " ".join(a) or "default")
def test_train_commands_compose_and_validate(tmp_path, args):
    cfg = compose_config(args, output_dir=tmp_path)
    validate_config(cfg)


@pytest.mark.parametrize("args", _commands("halo_lab.eval"), ids=lambda a: " ".join(a))
def test_eval_commands_compose(tmp_path, args):
    cfg = compose_config(args, output_dir=tmp_path, config_name="eval")
    assert cfg.source and cfg.data.dataset == "shakespeare"


def test_the_quick_start_runs_the_default_config(tmp_path):
    assert "make train" in LINES[0] and _commands("halo_lab.train")[0] == []  # make train = no overrides
    cfg = compose_config([], output_dir=tmp_path)
    assert cfg.model.hidden_size == 128 and cfg.trainer.max_steps == 500 and cfg.data.dataset == "shakespeare"
