"""The dense gate of the retrieval experiments (needle, mqar): pure functions, no I/O but reading a run.

A HALO-S retrieval number means something only where the dense baseline solves the same task with the
same recipe: if dense attention cannot retrieve at a point, the task or the training recipe is the
limit, not the attention graph (issue 14: the first needle/mqar reports measured a shortcut and a recipe
on which dense also failed). So at every point of a sweep (sequence length, seed and any other swept
override) the dense run must reach ``GATE`` (per-query accuracy on mqar, answer accuracy on the
needle); :func:`check_gate` decides, and :func:`gate_lines` gives the markdown the sweep report prints
under each experiment's heading: a one-line verdict (``Dense gate: passed`` / ``Dense gate: FAILED ...
not meaningful`` / ``not checked``) and a table of the controls beside the main accuracy with chance.

The Zoology-scale gate point itself is ``conf/experiment/mqar_gate.yaml``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

GATE = 0.95
"""The accuracy dense attention must reach at a point before HALO-S is compared there."""


@dataclass
class Result:
    """What the gate needs of one finished run."""

    label: str
    arch: str
    point: tuple  # (seq_len, seed, other swept overrides): runs at one point are compared
    acc: float | None
    control: float | None = None  # needle: the swapped-key control items' accuracy
    first_query: float | None = None  # mqar: the first query's accuracy
    chance: float | None = None  # 1 / records: an answer among the in-context values, picked blindly


@dataclass
class Verdict:
    passed: bool | None  # None: no dense run at some point (not checked)
    failed_points: list[tuple]
    unchecked_points: list[tuple]
    line: str


def _fmt_point(point: tuple) -> str:
    seq_len, seed, extra = (tuple(point) + (None, None, ""))[:3]
    parts = [f"len {seq_len}"] if seq_len is not None else []
    if seed is not None:
        parts.append(f"seed {seed}")
    if extra:
        parts.append(str(extra))
    return ", ".join(parts) or "the sweep"


def check_gate(results: Iterable[Result], gate: float = GATE) -> Verdict | None:
    """The verdict over a sweep's runs (None when no run has an accuracy: not a retrieval sweep).

    A point fails when its dense run scored below ``gate`` (or has no accuracy); a point without a dense
    run is unchecked. The sweep passes only when every point has a dense run that passed."""
    results = [r for r in results if r.acc is not None or r.arch == "dense"]
    if not any(r.acc is not None for r in results):
        return None
    points: dict[tuple, list[Result]] = {}
    for r in results:
        points.setdefault(r.point, []).append(r)
    failed, unchecked, dense_acc = [], [], {}
    for point, runs in points.items():
        dense = [r for r in runs if r.arch == "dense"]
        if not dense:
            unchecked.append(point)
            continue
        acc = min((r.acc if r.acc is not None else 0.0) for r in dense)
        dense_acc[point] = acc
        if acc < gate:
            failed.append(point)
    if failed:
        where = "; ".join(f"{_fmt_point(p)}: dense {dense_acc[p]:.3f}" for p in failed)
        line = (
            f"**Dense gate: FAILED** (dense must reach {gate:.2f}; {where}). The comparison at "
            f"{'this point' if len(failed) == 1 else 'these points'} is **not meaningful**: dense attention "
            "does not solve the task with this recipe, so the numbers measure the task and the recipe, "
            "not the attention graph."
        )
        passed = [p for p in dense_acc if p not in failed]
        if passed:
            line += (
                " Passed at " + "; ".join(f"{_fmt_point(p)}: dense {dense_acc[p]:.3f}" for p in passed) + "."
            )
        return Verdict(False, failed, unchecked, line)
    if unchecked:
        line = (
            f"**Dense gate: not checked** at {'; '.join(_fmt_point(p) for p in unchecked)} (no dense run "
            f"there): HALO-S numbers without a dense baseline that reaches {gate:.2f} are not evidence "
            "about the graph."
        )
        return Verdict(None, failed, unchecked, line)
    accs = ", ".join(f"{_fmt_point(p)}: {a:.3f}" for p, a in sorted(dense_acc.items(), key=str))
    line = f"**Dense gate: passed** (dense ≥ {gate:.2f} at every point: {accs})."
    return Verdict(True, failed, unchecked, line)


def controls_table(results: Iterable[Result]) -> list[str]:
    """Markdown: the main accuracy beside the first-query / swapped-key control accuracy and chance."""
    results = [r for r in results if r.acc is not None]
    if not results:
        return []
    has_ctl = any(r.control is not None for r in results)
    has_first = any(r.first_query is not None for r in results)
    header = ["run", "point", "accuracy"]
    header += ["first query"] if has_first else []
    header += ["swapped-key control"] if has_ctl else []
    header += ["chance (1 / records)"]
    rows = [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" if i < 2 else "---:" for i in range(len(header))) + "|",
    ]

    def f(v: float | None) -> str:
        return "" if v is None else f"{v:.3f}"

    for r in results:
        row = [r.label, _fmt_point(r.point), f(r.acc)]
        row += [f(r.first_query)] if has_first else []
        row += [f(r.control)] if has_ctl else []
        row += [f(r.chance)]
        rows.append("| " + " | ".join(row) + " |")
    return rows


CONTROL_NOTE = (
    "Swapped-key control: the same validation haystacks with the query asking another record, scored "
    "against that record. A model that retrieves by key scores it like the main accuracy; one that "
    "copies a record at a fixed rank scores chance, and one that finds the needle by its position "
    "(e.g. a trained distance) scores near 0."
)
FIRST_QUERY_NOTE = (
    "First query: the first query of each example. On the Zoology layout no answer is ever in the "
    "input, so no query can exclude values revealed before it: a model that does not retrieve scores "
    "chance on every query, the first included."
)
CHANCE_NOTE = "Chance (1 / records): a value picked blindly among the records in the context."


def gate_lines(results: Iterable[Result], gate: float = GATE) -> list[str]:
    """The report's block for one experiment: the verdict, then the controls table (empty list when the
    experiment reports no accuracy)."""
    results = list(results)
    verdict = check_gate(results, gate)
    if verdict is None:
        return []
    lines = [verdict.line, "", *controls_table(results), ""]
    notes = [CHANCE_NOTE] if any(r.chance is not None for r in results) else []
    if any(r.control is not None for r in results):
        notes.append(CONTROL_NOTE)
    if any(r.first_query is not None for r in results):
        notes.append(FIRST_QUERY_NOTE)
    return lines + ([" ".join(notes), ""] if notes else [])


# ---------------------------------------------------------------------------------------------- reading
def _last_val(history: list[dict[str, Any]]) -> dict[str, Any]:
    for rec in reversed(history or []):
        if "val/acc" in rec:
            return rec
    return {}


def _num_pairs(run_dir: Path) -> int | None:
    try:
        import yaml

        cfg = yaml.safe_load((Path(run_dir) / ".hydra" / "config.yaml").read_text())
        return int(cfg["data"]["num_pairs"])
    except Exception:  # not a synthetic task, or no readable config
        return None


def result_of(run: Any) -> Result:
    """A halo_lab.report Run (duck-typed: ok, arch, label, seq_len, seed, extra, m(), history, path) as a
    Result. The control and first-query accuracies come from metrics.json when it has them
    (``val_acc_control``, ``val_acc_first_query``), else from the last validation in history.jsonl."""
    val = _last_val(getattr(run, "history", []))

    def pick(key: str) -> float | None:
        v = run.m(key.replace("val/", "val_"))
        if v is None:
            v = val.get(key)
        return None if v is None else float(v)

    n = _num_pairs(run.path) if getattr(run, "path", None) is not None else None
    return Result(
        label=run.label or run.arch,
        arch=run.arch,
        point=(run.seq_len, run.seed, getattr(run, "extra", "")),
        acc=pick("val/acc") if run.ok else None,
        control=pick("val/acc_control") if run.ok else None,
        first_query=pick("val/acc_first_query") if run.ok else None,
        chance=1.0 / n if n else None,
    )


def report_lines(runs: Iterable[Any], gate: float = GATE) -> list[str]:
    """What halo_lab.report prints under an experiment's heading (nothing for non-retrieval sweeps)."""
    return gate_lines([result_of(r) for r in runs], gate)
