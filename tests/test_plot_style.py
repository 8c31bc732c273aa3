"""The one plotting style (halo_lab/report/style.py) at every plotting site: the report's plots, the bench's
bench.png, the eval's loss by position and experiments/ddp/plot.py. Each site's figures pass
``halo_lab.report.audit`` (legends outside the axes, bars from zero, no marker cut by the frame, every numeric
tick written by the one number formatter, at most MAX_SERIES series a panel); the rules a reader relies
on have a test of their own. Fast: Agg canvas, tiny data, nothing trained."""

from __future__ import annotations

import runpy
from pathlib import Path

import pytest
import yaml
from matplotlib.colors import to_hex
from matplotlib.figure import Figure

from halo_lab.report import build_report, style
from halo_lab.report.audit import audit
from halo_lab.report.labels import (
    BACKEND_COLORS,
    COLORS,
    MARKERS,
    SELECT_LABELS,
    VARIANT_LABELS,
    bench_label,
    bench_style,
    palette,
)
from tests.test_report import history, make_job, metrics

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def figures(monkeypatch):
    """Every figure saved during the test, by file stem (the files are still written)."""
    saved: dict[str, Figure] = {}
    real = Figure.savefig

    def savefig(self, path, **kw):
        saved[Path(path).stem] = self
        return real(self, path, **kw)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return saved


def many_series_sweep(root: Path) -> Path:
    """A needle sweep of 4 variants x 2 depths = 8 series at one length, two seeds of HALO-S L2; one
    variant at 0.3 ± 0.3 accuracy (an error bar that would reach below 0); distances from 2."""
    for variant, arch, abl in (("halo", "halo", "full"), ("dense", "dense", "full"),
                               ("local_only", "halo", "local_only"), ("halo_select", "halo", "full")):  # fmt: skip
        for layers in (2, 4):
            seeds = (0, 1) if (variant, layers) == ("halo", 2) else (0,)
            for seed in seeds:
                acc = {"2": 0.9, "16": 0.5, "100": (0.0, 0.6)[seed] if len(seeds) > 1 else 0.3}
                mc = {"hidden_size": 32, "num_layers": layers, "local_window": 16, "num_globals": 2,
                      "select_blocks": 2 if variant == "halo_select" else 0}  # fmt: skip
                job = make_job(
                    root,
                    [f"variant={variant}", "data.seq_len=128", f"model.num_layers={layers}", f"seed={seed}"],
                    metrics(arch, 1.30 + 0.01 * layers, 14_000.0 + 1000 * layers, 128, ablation=abl, seed=seed,
                            val_acc=0.5, val_acc_by_distance=acc, model_config=mc),
                    task="needle", history=history(1.3),
                )  # fmt: skip
                cfg = yaml.safe_load((job / ".hydra" / "config.yaml").read_text())
                (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({**cfg, "data": {"num_pairs": 4}}))
    return root


# ---------------------------------------------------------------------------------------------- rules
def test_one_number_formatter():
    cases = {
        0: "0", 0.25: "0.25", 1.325: "1.325", 612.345: "612.3", 999: "999", 1500: "1.5K", 8000: "8K",
        14_000: "14K", 625_499: "625.5K", 2_500_000: "2.5M", -1500: "-1.5K", 1024: "1K", 4096: "4K",
        32768: "32K", 131072: "128K", 768: "768",
    }  # fmt: skip
    assert {v: style.number(v) for v in cases} == cases
    assert style.number_formatter()(14_000, 0) == "14K"


def test_log_axis_labels_values_between_powers_of_ten():
    """HALO-S's 130-900 ms must be readable: more than 10^2 and 2x10^2 labelled, in the one format."""
    fig, axes = style.figure(1, legend_room=0)
    ax = axes[0][0]
    ax.plot([1024, 4096, 16384], [130, 400, 900], marker="o")
    style.log_axis(ax, "y")
    style.format_axis(ax, "x")
    fig.canvas.draw()
    lo, hi = ax.get_ylim()
    labels = [t.get_text() for t in ax.get_yticklabels() if t.get_text() and lo <= t.get_position()[1] <= hi]
    assert len(labels) >= 4, labels
    assert all(not t.startswith("$") for t in labels), labels  # no 10^2 mathtext
    assert style._readable_log_ticks(80, 215) == [80, 100, 120, 140, 160, 180, 200]  # under a decade: plain
    assert [style.number(t) for t in style._readable_log_ticks(2855, 246_791)] == [
        "5K", "10K", "20K", "50K", "100K", "200K",
    ]  # fmt: skip
    assert audit(fig) == []


def test_dodge_never_moves_a_point_below_zero_or_past_the_data():
    for i in range(8):
        assert min(style.dodge([2, 16, 100], i, 8)) > 0  # log axis: a factor
        lin = style.dodge([0, 50, 100], i, 8, log=False)
        assert 0 <= min(lin) and max(lin) <= 100  # linear: within the data's [min, max]


def test_panel_groups_split_many_series_and_keep_the_reference():
    series = ["dense", "flex", "flex_token", "hybrid", "hybrid_token", "window", "reference"]
    family = lambda v: v.removesuffix("_token")  # noqa: E731
    assert style.panel_groups(series[:6], family) == [("", series[:6])]
    panels = style.panel_groups(series, family, always=["dense"], pack=True)
    assert len(panels) > 1 and all(len(m) <= style.MAX_SERIES and m[0] == "dense" for _, m in panels)
    assert sorted({s for _, m in panels for s in m}) == sorted(series)


def test_every_variant_has_a_fixed_colour_and_marker():
    names = [*VARIANT_LABELS.values(), *SELECT_LABELS.values(), "dense"]
    assert {"HALO-S+sel", "local+sel"} <= set(names)
    assert all(n in COLORS and n in MARKERS for n in names)
    assert len({COLORS[n] for n in names}) == len(names)  # distinct
    assert len({MARKERS[n] for n in names}) == len(names)
    # the same colour whatever else is plotted, and in whatever order
    one, other = palette(["local+sel", "HALO-S+sel"]), palette(["dense", "HALO-S+sel", "no_random"])
    assert to_hex(one["HALO-S+sel"]) == to_hex(other["HALO-S+sel"]) == COLORS["HALO-S+sel"]


def test_every_bench_variant_has_a_fixed_colour():
    from halo_lab.bench.attention import _attention_variants
    from halo_lab.bench.decode_speed import DECODE_VARIANTS
    from halo_lab.config import HaloConfig

    variants = [
        *_attention_variants(HaloConfig()),
        *DECODE_VARIANTS,
        "halo_triton",
        "halo_flex",
        "pyhalos_halo",
    ]
    for v in variants:
        backend = v.removeprefix("pyhalos_").removesuffix("_token").removeprefix("halo_")
        assert backend in BACKEND_COLORS, v
        assert bench_style(v)["color"] == BACKEND_COLORS[backend]
    assert (
        bench_label("masked") == "HALO-S masked"
        and bench_label("hybrid_token") == "HALO-S hybrid, token edges"
    )
    assert BACKEND_COLORS["masked"] != BACKEND_COLORS["reference"]


# ---------------------------------------------------------------------------------------------- report
def test_report_plots_follow_the_style_and_split_many_series(tmp_path, figures):
    root = many_series_sweep(tmp_path / "needle")
    md = build_report(root, plots=True).read_text()
    assert "| HALO-S+sel L2 |" in md and "| HALO-S L2 |" in md  # the select variant is named apart
    assert set(figures) == {"needle_loss", "needle_accuracy_by_distance", "needle_summary"}
    for name, fig in figures.items():
        assert audit(fig) == [], name
    acc = figures["needle_accuracy_by_distance"]
    # 8 series: one panel per setting (L2, L4) with shared axes, each variant named by itself
    assert [ax.get_title().split("\n")[0] for ax in acc.axes] == ["L2", "L4"]
    assert acc.axes[0].get_shared_y_axes().joined(acc.axes[0], acc.axes[1])
    legend = {t.get_text() for lg in acc.legends for t in lg.get_texts()}
    assert {"HALO-S", "dense", "local-only", "HALO-S+sel"} <= legend
    for ax in acc.axes:
        lo, hi = ax.get_xlim()
        assert lo > 0  # no distance below 0, the dodged ones included
        for line in ax.get_lines():
            if line.get_gid() != style.REFERENCE:
                assert min(line.get_xdata()) > 0
        for coll in ax.collections:  # error bars inside [0, 1]
            for seg in coll.get_segments():
                assert all(-1e-9 <= y <= 1 + 1e-9 for _, y in seg), seg
    colours = {}
    for ax in acc.axes:
        for c in ax.containers:  # one errorbar container per series
            colours.setdefault(c.get_label(), set()).add(to_hex(c.lines[0].get_color()))
    assert colours["HALO-S+sel"] == {COLORS["HALO-S+sel"]} and colours["dense"] == {COLORS["dense"]}
    assert colours["HALO-S"] == {COLORS["HALO-S"]}  # in both panels
    # HALO-S L2 ran 2 seeds (0.0 and 0.6 at distance 100, mean 0.3): each seed's curve drawn faint behind the
    # mean, in the variant's colour; the single-seed variants get none
    faint = [line for line in acc.axes[0].get_lines() if (line.get_alpha() or 1.0) < 1.0]
    assert len(faint) == 2 and {to_hex(line.get_color()) for line in faint} == {COLORS["HALO-S"]}
    assert sorted(line.get_ydata()[-1] for line in faint) == [0.0, 0.6]
    assert "faint lines: each seed" in acc.get_suptitle()
    summary = figures["needle_summary"]
    width, height = summary.get_size_inches()
    assert height / width > 0.35  # not a strip
    for ax in summary.axes:
        assert ax.get_xlim()[0] == 0  # bars from zero
    ticks = [t.get_text() for t in summary.axes[1].get_xticklabels()]
    assert any(t.endswith("K") for t in ticks), ticks  # 14K, not 14000 / 14k


def test_report_plots_of_a_small_sweep_stay_one_panel(tmp_path, figures):
    root = tmp_path / "needle"
    for variant, arch in (("halo", "halo"), ("dense", "dense")):
        make_job(root, [f"variant={variant}"], metrics(arch, 1.3, 9000.0, 128, val_acc=0.5,
                 val_acc_by_distance={"16": 0.9, "48": 0.5}), task="needle", history=history(1.3))  # fmt: skip
    build_report(root, plots=True)
    assert len(figures["needle_accuracy_by_distance"].axes) == 1
    assert "faint" not in figures["needle_accuracy_by_distance"].get_suptitle()  # one seed: no seed curves
    assert all(audit(f) == [] for f in figures.values())


# ---------------------------------------------------------------------------------------------- bench
def bench_rows() -> list[dict]:
    rows = []
    for n in (1024, 4096, 16384):
        for k, v in enumerate(
            ["dense", "masked", "reference", "flex", "flex_token", "hybrid", "hybrid_token"]
        ):
            rows.append(
                {"part": "attention", "variant": v, "seq_len": n, "batch": 1, "ms": 100 + 90 * k + n / 100}
            )
        for v in ("dense", "halo"):
            rows.append({"part": "train_step", "variant": v, "seq_len": n, "batch": 1, "ms": 130 + n / 20})
    for b in (1, 8, 64):
        for v in ("dense", "halo", "halo_ring"):
            for n in (1024, 32768):
                rows.append({"part": "decode", "variant": v, "seq_len": n, "batch": b, "ms": 1.0,
                             "tokens_per_sec": 1000.0 * b * (2 if v != "dense" else 1)})  # fmt: skip
    return rows


def test_bench_plot_follows_the_style(tmp_path, figures):
    from halo_lab.bench.plots import plot

    plot(bench_rows(), tmp_path / "bench.png", "halo_lab bench: cpu, torch.float32")
    fig = figures["bench"]
    assert audit(fig) == []
    titles = [ax.get_title() for ax in fig.axes]
    # 9 decode series: one panel per batch; 7 attention backends: panels with dense in each
    assert [t for t in titles if t.startswith("decode")] == [
        "decode, batch 1",
        "decode, batch 8",
        "decode, batch 64",
    ]
    attention = [ax for ax in fig.axes if ax.get_title().startswith("attention")]
    assert len(attention) >= 2
    for ax in attention:
        assert any(line.get_label() == "dense" for line in ax.get_lines())
    legend = {t.get_text() for lg in fig.legends for t in lg.get_texts()}
    assert "HALO-S masked" in legend  # what CPU training runs
    ticks = [t.get_text() for t in fig.axes[-1].get_xticklabels() if t.get_text()]
    assert ticks == ["1K", "32K"]


def test_bench_cpu_mode_times_the_masked_backend():
    cfg = yaml.safe_load((ROOT / "conf" / "bench.yaml").read_text())
    assert "masked" in cfg["cpu"]["attention"]["backends"]
    assert "masked" not in cfg["gpu"]["attention"]["backends"]  # the GPU's list is what it was


def test_bench_plot_cli_redraws_a_results_file(tmp_path, figures):
    import json

    from halo_lab.bench.replot import main

    (tmp_path / "results.json").write_text(json.dumps({"device": "cpu", "dtype": "torch.float32", "mode": "cpu",
                                                       "rows": bench_rows()}))  # fmt: skip
    assert main([str(tmp_path / "results.json")]) == 0
    assert (tmp_path / "bench.png").stat().st_size > 0
    assert figures["bench"]._suptitle.get_text() == "halo_lab bench: cpu, torch.float32"


# ---------------------------------------------------------------------------------------------- eval, ddp
def test_eval_plot_follows_the_style(tmp_path, figures):
    from halo_lab.eval import plot_loss_by_position

    result = {
        "loss": 1.5, "sequences_seq_len": 128, "trained_max_seq_len": 64,
        "loss_by_position": [{"start": s, "end": s + 32, "tokens": 10, "loss": 2.0 - s / 200} for s in range(0, 128, 32)],
    }  # fmt: skip
    plot_loss_by_position(
        result, tmp_path / "loss_by_position.png", "baseline_h256 (last.ckpt): file, seq_len 128"
    )
    assert audit(figures["loss_by_position"]) == []


def test_eval_plot_title_names_the_run_not_the_checkpoint_file(tmp_path):
    from halo_lab.eval import source_name

    run = tmp_path / "baseline_h256"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.ckpt").write_bytes(b"")
    job = tmp_path / "2026-01-01_00-00-00" / "3"
    (job / "hub").mkdir(parents=True)
    assert source_name(str(run / "checkpoints" / "last.ckpt")) == "baseline_h256 (last.ckpt)"
    assert source_name(str(job / "hub")) == "2026-01-01_00-00-00/3 (hub export)"
    assert source_name(str(run)) == "baseline_h256"
    assert source_name("someone/halo-s-small") == "someone/halo-s-small"  # a Hub repo id


def test_ddp_plot_follows_the_style(monkeypatch, capsys):
    saved = []
    monkeypatch.setattr(style, "save", lambda fig, path: saved.append((fig, Path(path))))  # keep the PNG
    runpy.run_path(str(ROOT / "experiments" / "ddp" / "plot.py"), run_name="__main__")
    ((fig, path),) = saved
    assert path.name == "loss_curves.png" and audit(fig) == []
    assert "| global batch 32 x 512 | 1 GPU | 1.5758 |" in capsys.readouterr().out


def test_audit_catches_what_the_old_plots_did(tmp_path):
    """The checks fail on the old habits: a legend inside the axes, bars from 1.3, 14000 on an axis."""
    fig, axes = style.figure(1, legend_room=0)
    ax = axes[0][0]
    ax.bar([0, 1], [1.33, 1.35])
    ax.set_ylim(1.3, 1.36)
    ax.plot([0, 1], [1.33, 1.5], marker="o", label="HALO-S")
    ax.legend()
    ax.set_xticks([0, 1], ["14000", "8,000"])
    problems = " | ".join(audit(fig))
    for what in ("legend inside", "bars do not start at 0", "outside the frame", "not style.number"):
        assert what in problems, problems


def test_bar_values_stay_inside_the_frame_and_long_names_keep_panels_apart(tmp_path):
    """The MQAR 4096 report's summary (2026-12-07): 88-character names squeezed two bar panels to an inch
    each, so their x labels overlapped and '1.352M' ran past the frame. The audit sees both; the names'
    room keeps the panels apart, and ``save`` widens a value axis until its labels fit."""
    names = [
        f"HALO-S+sel select_router_rank=16 select_dense_warmup={k} select_routing_loss=1.0 lr 7e-4"
        for k in range(12)
    ]
    values = [1_352_000.0 + 90_000 * k for k in range(12)]

    def draw(width: float, room: float):
        fig, axes = style.figure(2, 1, width=width, height=4.0, legend_room=0, names=room, sharey=True)
        for ax, label in zip(axes[0], ("validation loss (nats/token)", "training tokens/s")):
            style.bars(ax, names, values, xlabel=label)
        return fig

    problems = " | ".join(audit(draw(4.0, 0.0)))
    assert "ends past the frame" in problems and "overlaps another panel" in problems, problems
    narrow = draw(2.0, style.name_room(names))  # apart, but 22% of headroom is less than '2.342M'
    assert "ends past the frame" in " | ".join(audit(narrow))
    style.save(narrow, tmp_path / "summary.png")
    assert audit(narrow) == []
    assert narrow.axes[0].get_xlim()[0] == 0  # still from zero
