"""``python -m halo_lab.report SWEEP_DIR [--out DIR] [--wandb auto|on|off]``: a sweep directory -> report.

Modules: ``runs`` (loading), ``tables`` (markdown), ``plots`` (PNGs), ``writer`` (``build_report``),
``wandb_log`` (the W&B summary), ``hook`` (the Hydra callback), ``cli``; ``labels`` (short variant names,
a fixed colour and marker per variant) and ``style`` (the project's one plotting style, which every
figure of halo_lab uses: the report's, the bench's, the eval's).

Reads every job of a sweep (``outputs/multirun/<experiment>/<time>/<overrides>/``): its ``metrics.json``
(final summary), ``.hydra/`` (config, overrides, group choices) and ``history.jsonl`` (loss curves), and
writes into ``--out`` (default: the sweep directory itself):

- ``report.md``: per experiment (``task_name``) the common setup, a table with one row per run (variant,
  sequence length, seed, parameters, validation loss, perplexity, bits per token, difference to the
  reference variant, tokens/s, peak memory, accuracy and accuracy by distance on the needle and mqar
  tasks; mqar's distances are bucket edges and its accuracies count queries), a
  mean/std table when several seeds ran, and the jobs that left no ``metrics.json`` (failed/unfinished);
- PNG plots (matplotlib, Agg canvas): ``<experiment>_loss.png`` (train and validation loss per variant),
  ``<experiment>_accuracy_by_distance.png`` (needle, mqar), ``<experiment>_throughput_memory.png`` (when the
  sequence length varies), ``<experiment>_summary.png`` (validation loss and tokens/s per variant).

With ``--wandb on`` (or ``auto`` when wandb is importable and the mode is not ``disabled``) the summary
table and the plots are logged to one W&B run (job_type ``report``, grouped with the experiment's runs);
the mode follows ``$WANDB_MODE`` like the runner's (offline without an API key), files under
``<sweep>/wandb/``. The experiment configs (conf/experiment/) attach :class:`SweepReport` as a Hydra
callback, so every ``+experiment=NAME -m`` sweep writes its report when it ends.

A directory with no job in it, or only foreign ones (no halo_lab config), is an error that says so.
"""

from __future__ import annotations

from halo_lab.report.cli import main
from halo_lab.report.hook import SweepReport
from halo_lab.report.plots import plot_accuracy, plot_loss, plot_summary, plot_throughput_memory
from halo_lab.report.runs import (
    ABLATION_ORDER,
    REPORT_FILE,
    ReportError,
    Run,
    find_runs,
    group_by_task,
    label_runs,
    load_run,
)
from halo_lab.report.tables import summary_rows
from halo_lab.report.wandb_log import log_to_wandb
from halo_lab.report.writer import build_report

__all__ = [
    "ABLATION_ORDER",
    "REPORT_FILE",
    "ReportError",
    "Run",
    "SweepReport",
    "build_report",
    "find_runs",
    "group_by_task",
    "label_runs",
    "load_run",
    "log_to_wandb",
    "main",
    "plot_accuracy",
    "plot_loss",
    "plot_summary",
    "plot_throughput_memory",
    "summary_rows",
]
