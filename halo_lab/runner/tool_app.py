"""A command-line tool as a Hydra app on conf/<name>.yaml and only the config groups its defaults list
names, with one-line errors: shared by halo_lab.eval and halo_lab.bench.

``register_tool_config`` stores the tool's config and groups (its ``--help`` lists those, not the
runner's); ``quote_path_overrides`` quotes a path that Hydra's override grammar would reject (a sweep
job directory: ``.../module.arch=dense,seed=2``); ``run_hydra_tool`` turns a mistake into one line
``PROG: error: ...`` and exit status 2.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from halo_lab.runner.config import ConfigError, conf_dir

CONF_DIR = str(conf_dir())


def register_tool_config(name: str) -> list[str]:
    """Store conf/<name>.yaml and every option of the config groups its defaults list names in Hydra's
    ConfigStore; return those groups. An app with ``config_path=None`` then sees only them: its
    ``--help`` lists them, not the runner's (trainer, callbacks, logger, ...), and a key that shares a
    name with a runner group (eval's ``device``) is a plain key. The YAML files stay the source."""
    from hydra.core.config_store import ConfigStore

    root = Path(CONF_DIR)
    primary = OmegaConf.load(root / f"{name}.yaml")
    store = ConfigStore.instance()
    store.store(name=name, node=primary, provider="halo_lab")
    groups = []
    for entry in primary.get("defaults") or []:
        keys = [entry.rsplit("/", 1)[0]] if isinstance(entry, str) and "/" in entry else []
        keys += list(entry) if isinstance(entry, DictConfig) else []
        for key in keys:
            group = key.removeprefix("override ").lstrip("+").split("@")[0].strip()
            if group in groups or not (root / group).is_dir():
                continue
            groups.append(group)
            for f in sorted((root / group).glob("*.yaml")):
                head = re.search(r"^#\s*@package\s+(\S+)", f.read_text(), re.M)
                store.store(
                    group=group,
                    name=f.stem,
                    node=OmegaConf.load(f),
                    package=head.group(1) if head else None,
                    provider="halo_lab",
                )
    return groups


def _hydra_quote(value: str) -> str:
    """``value`` as one quoted string of Hydra's override grammar (and no OmegaConf interpolation)."""
    value = re.sub(r"(\\*)('|\Z)", lambda m: m.group(1) * 2 + ("\\'" if m.group(2) else ""), value)
    return "'" + value.replace("${", "\\${") + "'"


def _existing_paths(value: str) -> list[str] | None:
    """``value`` cut at commas into paths that all exist (a sweep over job directories), else None."""
    parts, cur = [], ""
    for piece in value.split(","):
        cur = f"{cur},{piece}" if cur else piece
        if Path(cur).expanduser().exists():
            parts.append(cur)
            cur = ""
    return parts if parts and not cur else None


def quote_path_overrides(args: Sequence[str], keys: Sequence[str]) -> list[str]:
    """The command line with each ``KEY=PATH`` (KEY in ``keys``) quoted where Hydra's grammar would not
    read the path as typed: a sweep job directory holds ``=`` and ``,`` (``.../module.arch=dense,seed=2``).

    A value Hydra reads as that very string stays as it is (a Hub id, ``book.txt``). Otherwise a value
    that names an existing path is quoted whole; under ``-m``, a comma-separated list of existing paths
    is a sweep over them (each quoted where needed); a value Hydra cannot parse, or a comma without ``-m``,
    is quoted whole (the tool then says which file is missing). Anything else is left as it is."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()

    def reads_as(key: str, value: str) -> str | None:  # "str": that string; "sweep"; "other"; None
        try:
            o = parser.parse_override(f"{key}={value}")
        except HydraException:  # a syntax error (OverrideParseException comes from parse_overrides)
            return None
        if o.is_sweep_override():
            return "sweep"
        return "str" if isinstance(o.value(), str) and o.value() == value else "other"

    multirun = any(a in ("-m", "--multirun") for a in args)
    pattern = re.compile(rf"(\+{{0,2}}(?:{'|'.join(map(re.escape, keys))}))=(.+)", re.S)
    out = []
    for arg in args:
        m = pattern.fullmatch(arg)
        if m is None or m.group(2)[0] in "'\"":  # not ours, or quoted by the user already
            out.append(arg)
            continue
        key, value = m.groups()
        how = reads_as(key, value)
        if how == "str":
            out.append(arg)
        elif Path(value).expanduser().exists():
            out.append(f"{key}={_hydra_quote(value)}")
        elif multirun and "," in value and (paths := _existing_paths(value)):
            out.append(
                f"{key}=" + ",".join(p if reads_as(key, p) == "str" else _hydra_quote(p) for p in paths)
            )
        elif how is None or (how == "sweep" and not multirun):  # without -m a comma is part of a path
            out.append(f"{key}={_hydra_quote(value)}")
        else:
            out.append(arg)
    return out


def describe_hydra_error(exc: BaseException, prog: str) -> str:
    """One line for a Hydra composition or override error (Hydra's own report spans several)."""
    from hydra.errors import MissingConfigException, OverrideParseException

    def flat(e: BaseException | None) -> str:
        return " ".join(str(e).split()) if e is not None else ""

    if isinstance(exc, OverrideParseException):
        first = flat(str(exc.message).splitlines()[0] if str(exc.message).strip() else exc)
        return f"{exc.override}: not a valid override ({first}); quote a value that holds = , spaces or brackets: key='value'"
    if isinstance(exc, MissingConfigException) and exc.options and exc.missing_cfg_file:
        group, _, option = str(exc.missing_cfg_file).rpartition("/")
        return f"{group}={option}: no such option; choose one of {', '.join(exc.options)}"
    m = re.match(r"Could not override '([^']+)'", str(exc))
    if m and "not in struct" in str(exc.__cause__ or ""):
        return f"{m.group(1)}: not a key of {prog}'s config (python -m {prog} --help lists them)"
    msg = flat(exc)
    cause = flat(exc.__cause__)
    return f"{msg} ({cause})" if cause and cause not in msg else msg


def run_hydra_tool(
    prog: str, task: Callable[[DictConfig], Any], config_name: str, path_keys: Sequence[str] = ()
) -> Any:
    """Run ``task`` as the Hydra app on conf/<config_name>.yaml (``register_tool_config``) with the
    command line's ``path_keys`` paths quoted (``quote_path_overrides``). A composition error, a bad
    override, or a ConfigError out of a sweep's job is one line ``PROG: error: ...``, exit status 2.
    HYDRA_FULL_ERROR=1 keeps Hydra's full report."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    sys.argv[1:] = quote_path_overrides(sys.argv[1:], path_keys)

    def app_task(cfg: DictConfig) -> Any:
        return task(cfg)

    # Hydra adds the calling module's package (pkg://halo_lab) to the search path when the task's module
    # is importable (a console script, a test), and every package directory there is a config group:
    # halo_lab/device/ would turn eval's device= into a group choice. As "__main__" it adds nothing; the
    # job name (log file, hydra.job.name) comes from the YAML file's hydra.job.name instead.
    app_task.__module__ = "__main__"
    app = hydra.main(version_base="1.3", config_path=None, config_name=config_name)(app_task)
    user_full = os.environ.get("HYDRA_FULL_ERROR")
    with _tool_config_store(config_name):
        if user_full == "1":
            return app()
        os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra raises instead of printing its multi-line report
        try:
            return app()
        except (HydraException, OmegaConfBaseException, ConfigError) as exc:
            print(f"{prog}: error: {describe_hydra_error(exc, prog)}", file=sys.stderr)
            raise SystemExit(2) from None
        finally:
            if user_full is None:
                os.environ.pop("HYDRA_FULL_ERROR", None)
            else:
                os.environ["HYDRA_FULL_ERROR"] = user_full


@contextlib.contextmanager
def _tool_config_store(config_name: str):
    """While the app runs, Hydra's ConfigStore (one per process) holds Hydra's own nodes and this tool's
    config (``register_tool_config``), nothing else: where halo_lab.train was imported it holds the
    runner's ``device`` options, which would turn eval's ``device=`` into a group choice. Afterwards the
    store is as it was (plus what Hydra's plugins stored meanwhile): the tool's nodes would otherwise
    shadow conf/ for a later compose in this process (Hydra matches a file to a stored node of its name)."""
    from hydra.core.config_store import ConfigStore

    store = ConfigStore.instance()
    saved = store.repo
    store.repo = {k: v for k, v in saved.items() if not isinstance(v, dict)}
    store.repo["hydra"] = dict(saved.get("hydra", {}))  # a copy: the tool adds hydra/default to it
    mine: set[str] = set()
    try:
        mine = {f"{config_name}.yaml", *register_tool_config(config_name)}
        yield
    finally:
        used = store.repo
        store.repo = saved
        for k, v in used.items():  # plugins register on Hydra's first use, which may be this one
            if k == "hydra":
                for name, node in v.items():
                    if name != "default.yaml":
                        saved.setdefault("hydra", {}).setdefault(name, node)
            elif k not in mine:
                saved.setdefault(k, v)
