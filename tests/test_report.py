"""halo_lab.report on hand-made sweep directories (fast): tables, numbers, plots, failed jobs, W&B table,
the Hydra callback, and clear errors on empty or foreign directories."""

from __future__ import annotations

import json
import math
import statistics
import sys
import types
from pathlib import Path

import pytest
import yaml

from halo_lab import report
from halo_lab.report import ReportError, SweepReport, build_report, find_runs, main

PNG = b"\x89PNG\r\n\x1a\n"


def make_job(
    sweep: Path,
    overrides: list[str],
    metrics: dict | None,
    task: str = "baseline",
    history: list[dict] | None = None,
    choices: dict | None = None,
) -> Path:
    """A job directory laid out like the runner's: .hydra/{config,hydra,overrides}.yaml, metrics.json,
    history.jsonl."""
    job = sweep / (",".join(sorted(overrides)) or "default")
    (job / ".hydra").mkdir(parents=True)
    cfg = {"task_name": task, "model": {"arch": "halo", "hidden_size": 32}, "seed": 0}
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    hydra = {"hydra": {"runtime": {"choices": choices or {"model": "halo_tiny", "data": "shakespeare"}}}}
    (job / ".hydra" / "hydra.yaml").write_text(yaml.safe_dump(hydra))
    if metrics is not None:
        (job / "metrics.json").write_text(json.dumps({"status": "ok", "task_name": task, **metrics}))
    if history:
        (job / "history.jsonl").write_text("\n".join(json.dumps(h) for h in history) + "\n{broken")
    return job


def metrics(arch: str, val_loss: float, tps: float, seq_len: int = 256, **extra) -> dict:
    return {
        "val_loss": val_loss,
        "val_ppl": math.exp(val_loss),
        "val_bpt": val_loss / math.log(2),
        "params": 400_000,
        "steps": 100,
        "tokens_per_sec": tps,
        "peak_mem_mb": 500.0,
        "peak_mem_kind": "cpu_peak_rss",
        "wall_time_s": 60.0,
        "arch": arch,
        "ablation": extra.pop("ablation", "full"),
        "seed": extra.pop("seed", 0),
        "seq_len": seq_len,
        "batch_size": 8,
        "device": "cpu",
        "precision": "32-true",
        "world_size": 1,
        "model_config": {"hidden_size": 128, "num_layers": 2, "local_window": 64, "num_globals": 2},
        **extra,
    }


def history(final: float) -> list[dict]:
    rows = [{"step": s, "epoch": 0, "train/loss": final + 1.0 / s} for s in range(10, 101, 10)]
    rows += [{"step": s, "stage": "train", "val/loss": final + 0.5 / s} for s in (50, 100)]
    return rows


@pytest.fixture
def sweep(tmp_path) -> Path:
    root = tmp_path / "multirun" / "baseline" / "2026-01-01_00-00-00"
    for n in (256, 1024):
        make_job(
            root,
            ["model.arch=halo", f"data.seq_len={n}"],
            metrics("halo", 1.50, 9000.0, n),
            history=history(1.5),
        )
        make_job(
            root,
            ["model.arch=dense", f"data.seq_len={n}"],
            metrics("dense", 1.40, 12000.0 if n == 256 else 6000.0, n),
            history=history(1.4),
        )
    make_job(root, ["model.arch=halo", "data.seq_len=4096"], None)  # a job that failed
    (root / "multirun.yaml").write_text(
        yaml.safe_dump({"hydra": {"overrides": {"task": ["+experiment=baseline"]}}})
    )
    return root


def table_rows(md: str) -> list[list[str]]:
    return [
        [c.strip() for c in line.strip("|").split("|")] for line in md.splitlines() if line.startswith("| ")
    ]


def test_report_tables_numbers_and_plots(sweep, tmp_path):
    out = tmp_path / "out"
    path = build_report(sweep, out)
    assert path == out / "report.md"
    md = path.read_text()
    assert "## baseline" in md and "Command: `python -m halo_lab.train -m +experiment=baseline`" in md
    assert "4 finished, **1 failed or unfinished**" in md
    assert "`data.seq_len=4096,model.arch=halo`" in md  # the failed job is listed by name
    rows = table_rows(md)
    header = rows[0]
    body = {(r[0], r[1]): dict(zip(header, r)) for r in rows[2:] if len(r) == len(header)}
    assert set(body) == {("HALO-S", "256"), ("dense", "256"), ("HALO-S", "1024"), ("dense", "1024")}
    halo = body[("HALO-S", "1024")]
    assert halo["val loss"] == "1.5000" and halo["bits/token"] == f"{1.5 / math.log(2):.4f}"
    assert halo["Δ loss vs dense"] == "+0.1000"  # against dense at the same length
    assert halo["speed vs dense"] == "1.50x" and body[("HALO-S", "256")]["speed vs dense"] == "0.75x"
    assert halo["tokens/s"] == "9,000" and halo["params"] == "0.40M"
    # keys a query reads, from the run's recorded model config (dense: (N + 1) / 2)
    from halo_lab import estimate_graph_stats

    graph = {"hidden_size": 128, "num_layers": 2, "local_window": 64, "num_globals": 2}
    keys = estimate_graph_stats(graph, 1024)["edges_per_token"]
    assert halo["keys/query"] == f"{keys:,.0f}" and 64 < keys < 200
    assert body[("dense", "1024")]["keys/query"] == "512" and body[("dense", "256")]["keys/query"] == "128"
    assert body[("dense", "256")]["Δ loss vs dense"] == "–"
    # Rows sorted by length, HALO-S before dense.
    assert [r[0] for r in rows[2:6]] == ["HALO-S", "dense", "HALO-S", "dense"]
    for name in ("baseline_loss.png", "baseline_throughput_memory.png", "baseline_summary.png"):
        assert (out / name).read_bytes()[:8] == PNG
        assert f"]({name})" in md
    assert not (out / "baseline_accuracy_by_distance.png").exists()  # no needle runs
    assert not (sweep / "report.md").exists()  # --out respected


def test_report_defaults_to_the_sweep_directory_and_ignores_its_own_files(sweep):
    build_report(sweep)
    assert (sweep / "report.md").is_file()
    build_report(sweep)  # plots and report.md in the sweep directory are not runs
    assert len(find_runs(sweep)) == 5


def test_needle_accuracy_by_distance_and_seed_statistics(tmp_path):
    root = tmp_path / "needle"
    accs = {"halo": [0.9, 0.4], "dense": [1.0, 0.95], "halo:local_only": [0.9, 0.1]}
    for seed in (0, 1):
        for variant, (near, far) in accs.items():
            arch, _, abl = variant.partition(":")
            by_d = {"16": near, "240": far - 0.05 * seed}
            make_job(
                root,
                [f"variant={variant.replace(':', '_')}", f"seed={seed}"],
                metrics(
                    arch,
                    1.0,
                    5000.0,
                    ablation=abl or "full",
                    seed=seed,
                    val_acc=sum(by_d.values()) / 2,
                    val_acc_by_distance=by_d,
                ),
                task="needle",
            )
    md = build_report(root, plots=True).read_text()
    assert "Needle accuracy by distance" in md
    acc_rows = {
        (r[0], r[1]): r for r in table_rows(md) if len(r) == 5 and r[0] in ("HALO-S", "dense", "local-only")
    }
    assert acc_rows[("local-only", "1")][2:] == ["0.475", "0.900", "0.050"]
    assert "Mean ± standard deviation over seeds" in md
    seed_row = next(r for r in table_rows(md) if r[0] == "dense" and r[2] == "2")
    accs_dense = [(1.0 + 0.95) / 2, (1.0 + 0.90) / 2]
    assert seed_row[-1] == f"{statistics.mean(accs_dense):.3f} ± {statistics.stdev(accs_dense):.3f}"
    assert (root / "needle_accuracy_by_distance.png").read_bytes()[:8] == PNG


def test_mqar_accuracy_by_distance_buckets(tmp_path):
    root = tmp_path / "mqar"
    accs = {"halo": (0.95, 0.3), "dense": (1.0, 0.9), "halo:local_only": (0.9, 0.05)}
    for variant, (near, far) in accs.items():
        arch, _, abl = variant.partition(":")
        by_d = {"1": near, "64": (near + far) / 2, "256": far}
        make_job(
            root,
            [f"variant={variant.replace(':', '_')}"],
            metrics(
                arch,
                1.0,
                5000.0,
                seq_len=512,
                ablation=abl or "full",
                val_acc=0.5,
                val_acc_by_distance=by_d,
                distance_buckets=[1, 64, 256],
            ),
            task="mqar",
            choices={"model": "halo_tiny", "data": "mqar"},
        )
    md = build_report(root, plots=True).read_text()
    assert "## mqar" in md and "MQAR accuracy by distance (per query" in md and "Needle" not in md
    assert "buckets [1, 64, 256]: d=E counts the queries at E <= distance < the next edge" in md
    rows = {r[0]: r for r in table_rows(md) if len(r) == 6}
    assert rows["variant"][2:] == ["overall", "d=1", "d=64", "d=256"]
    assert rows["local-only"][2:] == ["0.500", "0.900", "0.475", "0.050"]
    assert rows["dense"][3:] == ["1.000", "0.950", "0.900"]
    assert (root / "mqar_accuracy_by_distance.png").read_bytes()[:8] == PNG


def test_extra_swept_override_goes_into_the_variant_label(tmp_path):
    root = tmp_path / "s"
    for lr in ("1e-3", "3e-3"):
        make_job(root, ["model.arch=halo", f"optimizer.lr={lr}"], metrics("halo", 1.0, 1.0))
    md = build_report(root, plots=False).read_text()
    assert "| HALO-S lr 1e-3 |" in md and "| HALO-S lr 3e-3 |" in md
    assert not any("optimizer.lr=" in line for line in md.splitlines() if line.startswith("|"))
    assert not list(root.glob("*.png"))


def test_the_common_setup_states_only_what_the_runs_share(tmp_path):
    """A sweep over depth: the setup line must not name one run's depth as everyone's."""
    root = tmp_path / "s"
    for arch, layers in (("dense", 4), ("halo", 6)):
        mc = {"hidden_size": 128, "num_layers": layers, "num_heads": 4, "num_kv_heads": 2, "local_window": 64}
        make_job(
            root,
            [f"model.arch={arch}", f"model.num_layers={layers}"],
            metrics(arch, 1.0, 1.0, model_config=mc),
        )
    model = next(
        line for line in build_report(root, plots=False).read_text().splitlines() if line.startswith("Model:")
    )
    assert "hidden 128, 4/6 layers (by row), 4 heads, 2 KV heads" in model, model
    assert "HALO-S graph: window 64." in model and "None" not in model, model


@pytest.mark.parametrize("key", ["+trainer.max_time", "logger"])
def test_a_per_job_time_limit_or_logger_is_not_a_sweep_axis(tmp_path, key):
    """A launcher gives each job the time left as trainer.max_time, and its jobs' logger changed between
    calls: neither may split variants or gate points (experiments/retrieval/grid.py)."""
    root = tmp_path / "s"
    values = {"+trainer.max_time": ("00:00:06:40", "00:00:05:10"), "logger": ("csv", "none")}[key]
    for arch, v in zip(("halo", "dense"), values):
        make_job(root, [f"model.arch={arch}", f"{key}={v}"], metrics(arch, 1.0, 1.0))
    from halo_lab.report.runs import label_runs

    runs = find_runs(root)
    label_runs(runs)
    assert sorted(r.label for r in runs) == ["HALO-S", "dense"]


def test_ablation_reference_is_the_full_graph(tmp_path):
    root = tmp_path / "ablation"
    for abl, loss in (("full", 1.2), ("local_only", 1.5)):
        make_job(root, [f"ablation={abl}"], metrics("halo", loss, 1000.0, ablation=abl), task="ablation")
    rows = table_rows(build_report(root, plots=False).read_text())
    header = rows[0]
    local = dict(zip(header, next(r for r in rows if r[0] == "local-only")))
    assert local["Δ loss vs HALO-S"] == "+0.3000"


# ---------------------------------------------------------------------------------------------- errors
def test_missing_empty_and_file_paths_fail_clearly(tmp_path, capsys):
    with pytest.raises(ReportError, match="no such directory"):
        build_report(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ReportError, match="no runs found"):
        build_report(empty)
    f = tmp_path / "file.txt"
    f.write_text("x")
    with pytest.raises(ReportError, match="not a directory"):
        build_report(f)
    assert main([str(empty)]) == 2
    err = capsys.readouterr().err
    assert "halo_lab.report: error:" in err and "no runs found" in err
    assert not (empty / "report.md").exists()


def test_foreign_directory_fails_clearly(tmp_path):
    other = tmp_path / "other_app" / "job0" / ".hydra"
    other.mkdir(parents=True)
    (other / "config.yaml").write_text(yaml.safe_dump({"db": {"driver": "mysql"}}))
    (other.parent / "metrics.json").write_text("{}")
    with pytest.raises(ReportError, match="not a halo_lab sweep directory"):
        build_report(tmp_path / "other_app")
    # A directory of unrelated files: no runs at all.
    junk = tmp_path / "junk"
    junk.mkdir()
    (junk / "notes.txt").write_text("hello")
    with pytest.raises(ReportError, match="no runs found"):
        build_report(junk)


def test_cli_writes_the_report(sweep, tmp_path, capsys):
    assert main([str(sweep), "--out", str(tmp_path / "cli"), "--no-plots", "--wandb", "off"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "cli" / "report.md")
    assert not list((tmp_path / "cli").glob("*.png"))


# ---------------------------------------------------------------------------------------------- W&B
class FakeWandb(types.ModuleType):
    def __init__(self):
        super().__init__("wandb")
        self.runs = []

    class Table:
        def __init__(self, columns, data):
            self.columns, self.data = columns, data

    class Image:
        def __init__(self, path):
            self.path = path

    def init(self, **kw):
        run = types.SimpleNamespace(kw=kw, logged=[], finished=False)
        run.log = run.logged.append
        run.finish = lambda: setattr(run, "finished", True)
        self.runs.append(run)
        return run


def test_wandb_summary_table(sweep, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "offline")
    build_report(sweep, tmp_path / "o", wandb="auto")
    (run,) = fake.runs
    assert run.finished and run.kw["mode"] == "offline" and run.kw["group"] == "baseline"
    assert run.kw["job_type"] == "report" and run.kw["dir"] == str(sweep)
    (payload,) = run.logged
    table = payload["summary"]
    assert table.columns[:3] == ["variant", "seq_len", "seed"] and len(table.data) == 5
    row = dict(zip(table.columns, table.data[0]))
    assert (
        row["variant"] == "HALO-S"
        and row["val_loss"] == 1.5
        and row["delta_val_loss_vs_ref"] == pytest.approx(0.1)
    )
    assert set(payload) == {"summary", "plots/loss", "plots/throughput_memory", "plots/summary"}
    assert isinstance(payload["plots/loss"], FakeWandb.Image)


def test_wandb_respects_disabled_mode_and_off(sweep, tmp_path, monkeypatch):
    fake = FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.setenv("WANDB_MODE", "disabled")
    build_report(sweep, tmp_path / "a", wandb="auto", plots=False)
    monkeypatch.setenv("WANDB_MODE", "offline")
    build_report(sweep, tmp_path / "b", wandb="off", plots=False)
    assert fake.runs == []
    with pytest.raises(ReportError, match="--wandb"):
        build_report(sweep, tmp_path / "c", wandb="sometimes", plots=False)


# ---------------------------------------------------------------------------------------------- callback
def _hydra_cfg(sweep_dir: Path, mode: str = "MULTIRUN"):
    from hydra.types import RunMode
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"hydra": {"sweep": {"dir": str(sweep_dir)}, "mode": mode}})
    cfg.hydra.mode = RunMode[mode]
    return cfg


def test_callback_claims_a_fresh_sweep_directory_and_refuses_an_existing_one(tmp_path, capsys):
    cb = SweepReport(wandb="off")
    fresh = tmp_path / "multirun" / "x" / "t1"
    cb.on_multirun_start(_hydra_cfg(fresh))
    assert fresh.is_dir()
    # A second launch in the same second gets the same name: refused instead of mixing two sweeps.
    with pytest.raises(SystemExit):
        cb.on_multirun_start(_hydra_cfg(fresh))
    assert "already exists" in capsys.readouterr().err


def test_callback_reports_after_each_job_and_never_fails_the_sweep(sweep, tmp_path, monkeypatch):
    cb = SweepReport(wandb="off")
    cb.on_job_end(_hydra_cfg(sweep), job_return=None)
    assert (sweep / "report.md").is_file()
    single = tmp_path / "single"
    cb.on_job_end(_hydra_cfg(single, mode="RUN"), job_return=None)  # single runs: nothing to do
    assert not single.exists()

    def boom(*a, **k):
        raise RuntimeError("disk full")

    monkeypatch.setattr(report.hook, "build_report", boom)
    cb.on_multirun_end(_hydra_cfg(sweep))  # logs a warning, does not raise


def test_a_directory_of_several_sweeps_lists_each_command_and_pools_seeds(tmp_path):
    parent = tmp_path / "multirun" / "ablation_cpu"
    for stamp, seed in (("2026-01-01_00-00-00", 0), ("2026-01-01_01-00-00", 1)):
        sweep = parent / stamp
        for abl, loss in (("full", 1.20 + seed / 100), ("local_only", 1.10 + seed / 50)):
            make_job(
                sweep,
                [f"ablation={abl}"] + ([f"seed={seed}"] if seed else []),
                metrics("halo", loss, 1000.0, ablation=abl, seed=seed),
                task="ablation_cpu",
            )
        task = ["+experiment=ablation_cpu"] + ([f"seed={seed}"] if seed else [])
        (sweep / "multirun.yaml").write_text(yaml.safe_dump({"hydra": {"overrides": {"task": task}}}))
    md = build_report(parent, plots=False).read_text()
    assert "- `python -m halo_lab.train -m +experiment=ablation_cpu` (`2026-01-01_00-00-00`)" in md
    assert "- `python -m halo_lab.train -m +experiment=ablation_cpu seed=1` (`2026-01-01_01-00-00`)" in md
    rows = table_rows(md)
    # seed is its own column, not part of the variant label; the Δ compares within a seed.
    header = rows[0]
    local = [dict(zip(header, r)) for r in rows if r[0] == "local-only" and len(r) == len(header)]
    assert {(r["seed"], r["Δ loss vs HALO-S"]) for r in local} == {("0", "-0.1000"), ("1", "-0.0900")}
    seed_row = next(r for r in rows if r[0] == "local-only" and r[2] == "2")
    assert seed_row[3] == f"{statistics.mean([1.10, 1.12]):.4f} ± {statistics.stdev([1.10, 1.12]):.4f}"


def test_delta_compares_with_dense_of_the_same_model_size(tmp_path):
    # Two model sizes at one length: HALO-S medium is compared with dense medium, not dense small.
    root = tmp_path / "sweep"
    make_job(root, ["model.arch=halo"], metrics("halo", 1.50, 9000.0, 1024, attention_backend="flex"))
    make_job(root, ["model.arch=dense"], metrics("dense", 1.40, 9000.0, 1024, attention_backend="dense"))
    make_job(root, ["model.arch=halo", "model=halo_medium"], metrics("halo", 1.30, 9000.0, 1024))
    make_job(root, ["model.arch=dense", "model=halo_medium"], metrics("dense", 1.10, 9000.0, 1024))
    md = build_report(root, plots=False).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| HALO-S halo_medium |"))
    assert "+0.2000" in row, row
    small = next(line for line in md.splitlines() if line.startswith("| HALO-S | 1024"))
    assert "+0.1000" in small, small
    assert "HALO-S attention ran on **flex**" in md  # dense runs do not count


def test_sweeps_with_the_architecture_in_module_arch(tmp_path):
    """Sweeps since the architecture moved to module.arch (and the ablation to Hydra's choices)."""
    root = tmp_path / "sweep"
    for arch in ("halo", "dense"):
        job = make_job(root, [f"module.arch={arch}"], metrics(arch, 1.0, 1.0))
        cfg = {"task_name": "train", "module": {"arch": arch}, "model": {"hidden_size": 32}, "seed": 0}
        (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump(cfg))
    runs = find_runs(root)
    assert sorted(r.arch for r in runs) == ["dense", "halo"]
    assert all(r.ablation == "full" for r in runs)


# ---------------------------------------------------------------------------------------------- plots
def test_every_plot_uses_short_labels_fixed_colours_zero_based_bars_and_a_chance_line(tmp_path, monkeypatch):
    """A tiny needle sweep with long overrides: every legend, tick and header shows the short variant
    names, a variant has one colour in every panel and figure, loss bars start at zero, tick labels are
    not raw numbers, the accuracy plot has a chance line and legends sit outside the axes."""
    from matplotlib.colors import to_hex
    from matplotlib.figure import Figure

    figures = {}
    save = Figure.savefig
    monkeypatch.setattr(
        Figure,
        "savefig",
        lambda self, path, **kw: (figures.__setitem__(Path(path).stem, self), save(self, path, **kw))[1],
    )
    root = tmp_path / "needle"
    for variant, arch, abl in (("halo", "halo", "full"), ("dense", "dense", "full"), ("local_only", "halo", "local_only"),
                               ("halo_no_globals", "halo", "no_globals")):  # fmt: skip
        for n in (128, 256):
            job = make_job(
                root,
                [f"variant={variant}", f"data.seq_len={n}", "data.task_kwargs.distances=[16,48,112]",
                 "data.num_pairs=4"],
                metrics(arch, 1.31 + 0.01 * len(abl), 612_345.0, n, ablation=abl, val_acc=0.5,
                        val_acc_by_distance={"16": 0.9, "48": 0.5, "112": 0.3}),
                task="needle", history=history(1.3),
            )  # fmt: skip
            cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
            (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**cfg, "data": {"num_pairs": 4}}))
    md = build_report(root, plots=True).read_text()
    short = {"HALO-S", "dense", "local-only", "no_globals"}
    assert {r[0] for r in table_rows(md) if r[0] in short} == short
    shown = [line for line in md.splitlines() if line.startswith(("|", "#"))]  # tables and headers
    assert not any(k in line for line in shown for k in ("variant=", "task_kwargs", "halo_no_globals"))
    assert set(figures) == {
        "needle_loss",
        "needle_accuracy_by_distance",
        "needle_summary",
        "needle_throughput_memory",
    }
    colours: dict[str, set] = {}
    for name, fig in figures.items():
        legend_texts = {t.get_text() for lg in fig.legends for t in lg.get_texts()}
        for ax in fig.axes:
            assert not ax.get_legend(), f"{name}: a legend inside the axes"
            ticks = [t.get_text() for t in ax.get_xticklabels()] + [
                t.get_text() for t in ax.get_yticklabels()
            ]
            assert not any("=" in t or "00000" in t for t in ticks), (name, ticks)
            for line in ax.get_lines():
                if line.get_label() in short:
                    colours.setdefault(line.get_label(), set()).add(to_hex(line.get_color()))
        if name == "needle_summary":
            ax = fig.axes[0]
            assert ax.get_xlim()[0] == 0  # horizontal bars from zero
            names = [t.get_text().split(" · ")[0] for t in ax.get_yticklabels()]
            assert set(names) == short
            for patch, label in zip(ax.patches, names):
                colours.setdefault(label, set()).add(to_hex(patch.get_facecolor()))
        else:
            assert short <= {t.split(" (")[0] for t in legend_texts}, (name, legend_texts)
        if name == "needle_accuracy_by_distance":
            assert "chance (0.25)" in legend_texts
            assert any(
                line.get_label() == "chance (0.25)" and set(line.get_ydata()) == {0.25}
                for line in fig.axes[0].get_lines()
            )
    assert all(len(c) == 1 for c in colours.values()), colours  # one colour per variant everywhere
    assert len({next(iter(c)) for c in colours.values()}) == len(colours)  # and distinct variants differ
