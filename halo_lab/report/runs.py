"""Loading a sweep: its jobs (metrics.json, .hydra/, history.jsonl) as :class:`Run` objects, labelled by variant."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger("halo_lab.report")


ABLATION_ORDER = ("full", "no_globals", "no_dilated", "no_random", "local_only")
# Override keys that the variant / seq_len / seed columns already show.
SHOWN_KEYS = {"module.arch", "model.arch", "ablation", "variant", "data.seq_len", "seed", "model.max_seq_len"}
# Overrides that bound how long a job runs or where it writes its metrics, not what it computes (a
# launcher sets the time per job from the time left, experiments/retrieval/grid.py, and its logger changed
# from csv to none between calls): never a sweep axis; the steps column shows what the time limit cut.
RUN_ONLY_KEYS = {"trainer.max_time", "logger"}
REPORT_FILE = "report.md"


class ReportError(ValueError):
    """A directory that cannot be reported on (missing, empty, or not a halo_lab sweep)."""


# ---------------------------------------------------------------------------------------------- loading
@dataclass
class Run:
    path: Path
    name: str  # the job directory relative to the sweep directory
    task: str
    overrides: dict[str, str]
    choices: dict[str, Any]
    metrics: dict[str, Any] | None
    history: list[dict[str, Any]] = field(default_factory=list)
    label: str = ""
    extra: str = ""  # the swept overrides the label shows besides arch / ablation (e.g. the model size)

    @property
    def ok(self) -> bool:
        return self.metrics is not None and self.metrics.get("status", "ok") == "ok"

    def m(self, key: str, default: Any = None) -> Any:
        return (self.metrics or {}).get(key, default)

    @property
    def arch(self) -> str:
        return str(
            self.m("arch") or self.overrides.get("module.arch") or self.overrides.get("model.arch") or "?"
        )

    @property
    def ablation(self) -> str:
        return str(self.m("ablation") or self.choices.get("ablation") or "full")

    @property
    def seq_len(self) -> int | None:
        v = self.m("seq_len")
        if v is None and "data.seq_len" in self.overrides:
            try:
                v = int(self.overrides["data.seq_len"])
            except ValueError:
                v = None
        return v

    @property
    def selects(self) -> bool:
        """Content-selected blocks (``variant=halo_select`` / ``local_select``: model.select_blocks > 0)."""
        cfg = self.m("model_config") or {}
        n = cfg.get("select_blocks") if isinstance(cfg, dict) else None
        if n is None:
            n = self.overrides.get("model.select_blocks")
        try:
            return int(n) > 0
        except (TypeError, ValueError):  # not recorded: the variant option's name
            return str(self.choices.get("variant", "")).endswith("_select")

    @property
    def seed(self) -> Any:
        return self.m("seed", self.overrides.get("seed"))


def _read_yaml(path: Path) -> Any:
    from omegaconf import OmegaConf

    try:
        return OmegaConf.to_container(OmegaConf.load(path), resolve=False)
    except Exception:  # an unreadable file counts as absent
        return None


def _parse_overrides(items: Any) -> dict[str, str]:
    out = {}
    for item in items or []:
        key, sep, value = str(item).partition("=")
        if sep:
            out[key.lstrip("+~")] = value
    return out


def _read_history(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill: skip it
        if isinstance(rec, dict) and "step" in rec:
            rows.append(rec)
    return rows


def _is_halo_config(cfg: Any) -> bool:
    # module.arch; sweeps made before the architecture moved out of the model node: model.arch
    if not (isinstance(cfg, dict) and isinstance(cfg.get("model"), dict)):
        return False
    return "arch" in cfg["model"] or "arch" in (cfg.get("module") or {})


def load_run(job_dir: Path, root: Path) -> Run | None:
    """One job directory (with ``.hydra/config.yaml``) -> Run; None when it is not a halo_lab run."""
    hydra_dir = job_dir / ".hydra"
    cfg = _read_yaml(hydra_dir / "config.yaml")
    if not _is_halo_config(cfg):
        return None
    hydra_cfg = _read_yaml(hydra_dir / "hydra.yaml") or {}
    hydra_node = hydra_cfg.get("hydra", {}) if isinstance(hydra_cfg, dict) else {}
    choices = dict((hydra_node.get("runtime") or {}).get("choices") or {})
    overrides = _parse_overrides(_read_yaml(hydra_dir / "overrides.yaml"))
    metrics = None
    mpath = job_dir / "metrics.json"
    if mpath.is_file():
        try:
            metrics = json.loads(mpath.read_text())
        except ValueError:
            metrics = {"status": "unreadable metrics.json"}
        if not isinstance(metrics, dict):
            metrics = {"status": "unreadable metrics.json"}
    task = str((metrics or {}).get("task_name") or cfg.get("task_name") or "train")
    name = str(job_dir.relative_to(root)) if job_dir != root else job_dir.name
    return Run(
        path=job_dir,
        name=name,
        task=task,
        overrides=overrides,
        choices=choices,
        metrics=metrics,
        history=_read_history(job_dir / "history.jsonl"),
    )


def find_runs(sweep_dir: str | Path) -> list[Run]:
    """Every halo_lab job under ``sweep_dir`` (itself included: a single run directory works too)."""
    root = Path(sweep_dir)
    if not root.exists():
        raise ReportError(f"{root}: no such directory")
    if not root.is_dir():
        raise ReportError(f"{root}: not a directory (expected a sweep directory)")
    job_dirs = sorted({p.parent.parent for p in root.rglob(".hydra/config.yaml")})
    job_dirs = [d for d in job_dirs if "wandb" not in d.relative_to(root).parts]
    if not job_dirs:
        raise ReportError(
            f"{root}: no runs found: expected job directories holding .hydra/config.yaml and metrics.json, "
            "as `python -m halo_lab.train -m ...` writes them (outputs/multirun/<experiment>/<time>/)"
        )
    runs = [r for r in (load_run(d, root) for d in job_dirs) if r is not None]
    if not runs:
        raise ReportError(
            f"{root}: not a halo_lab sweep directory: {len(job_dirs)} Hydra job director"
            f"{'y' if len(job_dirs) == 1 else 'ies'} but none written by halo_lab.train "
            "(no module.arch in .hydra/config.yaml)"
        )
    return runs


# ---------------------------------------------------------------------------------------------- variants
def _variant_base(run: Run) -> str:
    from halo_lab.report.labels import variant_label

    return variant_label(run.arch, run.ablation, run.selects)


def _sort_key(run: Run) -> tuple:
    order = 99 if run.arch == "dense" else 0
    if run.arch != "dense":
        order = ABLATION_ORDER.index(run.ablation) if run.ablation in ABLATION_ORDER else 50
        order += 0.5 * run.selects  # HALO-S+sel after HALO-S, local+sel after local-only
    seed = run.seed if isinstance(run.seed, (int, float)) else 0
    return (run.seq_len or 0, order, run.label, seed, run.name)


def label_runs(runs: list[Run]) -> None:
    """Short variant labels (halo_lab.report.labels): the variant, plus the short form of any swept
    override that the variant / seq_len / seed columns do not show."""
    from halo_lab.report.labels import override_label

    keys = set().union(*(r.overrides for r in runs))
    varying = sorted(
        k for k in keys if k not in SHOWN_KEYS | RUN_ONLY_KEYS and len({r.overrides.get(k) for r in runs}) > 1
    )
    for r in runs:
        extra = [override_label(k, r.overrides[k]) for k in varying if k in r.overrides]
        r.extra = ", ".join(extra)
        r.label = " ".join([_variant_base(r), *extra])


def group_by_task(runs: list[Run]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        groups[r.task].append(r)
    for task_runs in groups.values():
        label_runs(task_runs)
        task_runs.sort(key=_sort_key)
    return dict(sorted(groups.items()))


def _reference(run: Run, runs: list[Run]) -> Run | None:
    """The run a row is compared with: dense at the same length and seed, else HALO-S full; one with the
    same other swept overrides (e.g. the same model size) first."""
    for want in (
        lambda r: r.arch == "dense",
        lambda r: r.arch == "halo" and r.ablation == "full" and not r.selects,
    ):
        same = [r for r in runs if r.ok and want(r) and r.seq_len == run.seq_len and r.seed == run.seed]
        for r in sorted(same, key=lambda r: r.extra != run.extra):
            return r
    return None
