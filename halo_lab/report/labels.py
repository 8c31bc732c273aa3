"""Short variant labels and one fixed colour and marker per variant, for every table, panel and report.

A label is the variant's name (``HALO-S``, ``dense``, ``local-only``, ``no_globals`` ...) followed by
the short form of each other override the sweep varies (``OVERRIDE_LABELS``: ``model.hidden_size=256`` ->
``h256``, ``optimizer.lr=1e-3`` -> ``lr 1e-3``); an override without an entry shows as its last key part
and a value cut to 12 characters, so no raw override string reaches an axis or a header. Colours come
from the label itself (a fixed table for the named variants, a hash for the others), never from the
order of the runs, so a variant has the same colour in every panel and every report. The variants with
content-selected blocks (``variant=halo_select``, ``variant=local_select``: ``model.select_blocks`` > 0)
are ``HALO-S+sel`` and ``local+sel``. The bench's variants (dense and the HALO-S backends, ``bench_label``,
``bench_style``) have fixed colours too. halo_lab.report.style has the rest of the one plotting style.
"""

from __future__ import annotations

import zlib
from collections import defaultdict
from collections.abc import Iterable

VARIANT_LABELS = {
    "full": "HALO-S",
    "local_only": "local-only",
    "no_globals": "no_globals",
    "no_dilated": "no_dilated",
    "no_random": "no_random",
}
# the variants with content-selected blocks (select_blocks > 0), by their graph's ablation
SELECT_LABELS = {"full": "HALO-S+sel", "local_only": "local+sel"}
# override key -> format of its value in a label
OVERRIDE_LABELS = {
    "model": "{}",
    "model.hidden_size": "h{}",
    "model.num_layers": "L{}",
    "model.num_heads": "H{}",
    "model.local_window": "W{}",
    "model.num_globals": "G{}",
    "model.num_random": "R{}",
    "model.dilated_offsets": "dil {}",
    "model.random_edges": "{} edges",
    "model.short_conv": "conv{}",
    "model.attention_backend": "{}",
    "model.graph_block_size": "block {}",
    "optimizer.lr": "lr {}",
    "trainer.max_steps": "{} steps",
    "data.tokenizer": "{}",
    "data.batch_size": "batch {}",
    "device": "{}",
}
COLORS = {
    "HALO-S": "#1f77b4",
    "dense": "#ff7f0e",
    "local-only": "#2ca02c",
    "no_globals": "#d62728",
    "no_dilated": "#9467bd",
    "no_random": "#8c564b",
    "HALO-S+sel": "#17becf",
    "local+sel": "#bcbd22",
}
# labels without a fixed colour: one of these by a hash of the label (never the order of the runs)
_OTHER_COLORS = ["#e377c2", "#7f7f7f", "#393b79", "#637939", "#8c6d31", "#843c39"]
MARKERS = {
    "HALO-S": "o",
    "dense": "s",
    "local-only": "^",
    "no_globals": "v",
    "no_dilated": "D",
    "no_random": "P",
    "HALO-S+sel": "X",
    "local+sel": "h",
}


def variant_label(arch: str, ablation: str, select: bool = False) -> str:
    if arch == "dense":
        return "dense"
    if arch != "halo":
        return arch
    if select:
        return SELECT_LABELS.get(ablation, f"{VARIANT_LABELS.get(ablation, ablation)}+sel")
    return VARIANT_LABELS.get(ablation, ablation)


def override_label(key: str, value: str) -> str:
    fmt = OVERRIDE_LABELS.get(key)
    value = str(value).strip("'\"")
    if fmt is not None:
        return fmt.format(value)
    short = value if len(value) <= 12 else value[:11] + "…"
    return f"{key.rsplit('.', 1)[-1]}={short}"


def _base(label: str) -> str:
    return next(
        (b for b in sorted(COLORS, key=len, reverse=True) if label == b or label.startswith(b + " ")), ""
    )


def color(label: str) -> str:
    if label in COLORS:
        return COLORS[label]
    return _OTHER_COLORS[zlib.crc32(label.encode()) % len(_OTHER_COLORS)]


def palette(labels: Iterable[str]) -> dict[str, tuple[float, float, float]]:
    """label -> colour. A named variant keeps its colour; labels that add swept overrides to one variant
    (``HALO-S h128``, ``HALO-S h256``) get shades of it, lighter in sorted order."""
    from matplotlib.colors import to_rgb

    by_base: dict[str, list[str]] = defaultdict(list)
    for lab in dict.fromkeys(labels):
        by_base[_base(lab)].append(lab)
    out: dict[str, tuple[float, float, float]] = {}
    for base, labs in by_base.items():
        if not base:
            out.update({lab: to_rgb(color(lab)) for lab in labs})
            continue
        labs.sort(key=lambda lab: (lab != base, lab))
        r, g, b = to_rgb(COLORS[base])
        for k, lab in enumerate(labs):
            t = 0.6 * k / (len(labs) - 1) if len(labs) > 1 else 0.0  # mix with white
            out[lab] = (r + (1 - r) * t, g + (1 - g) * t, b + (1 - b) * t)
    return out


def marker(label: str) -> str:
    return MARKERS.get(_base(label) or label, "o")


def zorder(label: str) -> float:
    """HALO-S variants above dense: a HALO-S line that matches dense's is drawn on top, not hidden."""
    return 2.0 if _base(label) == "dense" else 3.0


# ---------------------------------------------------------------------------------------------- bench
# halo_lab.bench's rows: ``variant`` is dense, a HALO-S backend of the attention part (``triton``,
# ``masked``, ``reference``, ``flex``, ``hybrid``; ``*_token``: per-token random edges; ``window``: the
# window alone; ``triton_select``: the content-selected blocks, ``_mean`` at the earlier settings),
# ``halo`` / ``halo_<backend>`` (train step, decode), ``halo_ring`` (decode, ring cache), ``halo_select`` (decode, selected blocks) or
# ``pyhalos_<arch>`` (the reference package).
BACKEND_COLORS = {
    "dense": COLORS["dense"],
    "halo": COLORS["HALO-S"],  # the auto backend
    "triton": COLORS["HALO-S"],  # auto on CUDA
    "masked": "#393b79",  # auto on the CPU (what CPU training uses)
    "reference": "#7f7f7f",
    "flex": "#e377c2",
    "hybrid": "#8c6d31",
    "window": COLORS["local-only"],
    "ring": "#9467bd",
    "select": COLORS["HALO-S+sel"],  # the selected blocks: the report's colour of the select variant
    "triton_select": COLORS["HALO-S+sel"],
    "triton_select_mean": "#9edae5",  # the earlier rows' settings: the same hue, lighter
}
BACKEND_MARKERS = {"dense": "s", "reference": "D", "window": "^", "ring": "v"}


def _bench_parts(variant: str) -> tuple[str, str, bool]:
    """(package prefix, backend, per-token random edges) of a bench row's variant."""
    package = ""
    if variant.startswith("pyhalos_"):
        package, variant = "pyhalos ", variant.removeprefix("pyhalos_")
    token = variant.endswith("_token")
    variant = variant.removesuffix("_token")
    if variant.startswith("halo_"):
        variant = variant.removeprefix("halo_")
    return package, variant, token


def bench_label(variant: str) -> str:
    """``halo_flex`` -> ``HALO-S flex``, ``masked`` -> ``HALO-S masked``, ``hybrid_token`` -> ``HALO-S
    hybrid, token edges``, ``halo_ring`` -> ``HALO-S ring cache``, ``window`` -> ``window only``."""
    package, backend, token = _bench_parts(variant)
    if backend == "dense":
        name = "dense"
    elif backend == "halo":
        name = "HALO-S"
    elif backend == "window":
        name = "window only"
    elif backend == "ring":
        name = "HALO-S ring cache"
    else:
        name = f"HALO-S {backend}"
    return package + name + (", token edges" if token else "")


def bench_style(variant: str) -> dict:
    """Colour, marker and line style of a bench variant: fixed per backend; per-token edges dashed, the
    reference package's rows dotted."""
    package, backend, token = _bench_parts(variant)
    return {
        "color": BACKEND_COLORS.get(backend) or color(backend),
        "marker": BACKEND_MARKERS.get(backend, "o"),
        "ls": ":" if package else ("--" if token else "-"),
    }
