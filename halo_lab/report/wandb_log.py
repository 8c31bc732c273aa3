"""The W&B side of a report: one run per experiment (job_type ``report``) with the summary table and the plots."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from halo_lab.report.runs import ReportError, Run, _read_yaml
from halo_lab.report.tables import summary_rows

log = logging.getLogger("halo_lab.report")


# ---------------------------------------------------------------------------------------------- W&B
def _wandb_mode() -> str:
    from halo_lab.runner.wandb_run import wandb_mode

    return wandb_mode(None)


def _want_wandb(setting: str) -> bool:
    if setting not in ("auto", "on", "off"):
        raise ReportError(f"--wandb {setting!r}: must be auto, on or off")
    if setting == "off":
        return False
    try:
        import wandb  # noqa: F401
    except ImportError:
        if setting == "on":
            raise ReportError("--wandb on: wandb is not installed") from None
        return False
    return setting == "on" or _wandb_mode() != "disabled"


def log_to_wandb(groups: dict[str, list[Run]], images: dict[str, list[Path]], sweep_dir: Path) -> None:
    """One W&B run per experiment (job_type ``report``, the experiment's group): the summary table and
    the plots. ``wandb.finish()`` always runs, so a report never merges into a later run."""
    import wandb

    mode = _wandb_mode()
    for task, runs in groups.items():
        project = "halo_lab"
        cfg = _read_yaml(runs[0].path / ".hydra" / "config.yaml") or {}
        wb = ((cfg.get("logger") or {}).get("wandb") or {}) if isinstance(cfg, dict) else {}
        if isinstance(wb.get("project"), str) and "${" not in wb["project"]:
            project = wb["project"]
        header, rows = summary_rows(runs)
        run = wandb.init(
            project=project,
            group=task,
            job_type="report",
            name=f"report-{task}-{sweep_dir.name}",
            dir=str(sweep_dir),
            mode=mode,
            config={"sweep_dir": str(sweep_dir), "runs": len(runs)},
            reinit="finish_previous",
        )
        try:
            table = wandb.Table(columns=header, data=[[_wb_cell(v) for v in row] for row in rows])
            payload: dict[str, Any] = {"summary": table}
            for p in images.get(task, []):
                payload[f"plots/{p.stem.removeprefix(f'{task}_')}"] = wandb.Image(str(p))
            run.log(payload)
        finally:
            run.finish()
        log.info("W&B (%s): logged the %s summary table (%d rows)", mode, task, len(rows))


def _wb_cell(v: Any) -> Any:
    if v is None or isinstance(v, (int, float, str, bool)):
        return v
    return str(v)
