"""The printed tables: ratios to the dense row, the bench's table, and the decode bench's own table."""

from __future__ import annotations

import re


def add_ratios(rows: list[dict]) -> None:
    """ratio_to_dense: time (decode: tokens/s) and memory relative to the dense row of the same part, length
    and mode (a compiled training step against compiled dense: ``dense_compiled``)."""

    def key(r: dict) -> tuple:
        return r["part"], r["seq_len"], r.get("batch"), r.get("mode", "eager")

    dense = {key(r): r for r in rows if r["variant"] in ("dense", f"dense_{r.get('mode')}") and "ms" in r}
    for r in rows:
        d = dense.get(key(r))
        if d is None or r.get("ms") is None or d.get("ms") is None:
            continue
        r["ratio_to_dense"] = r["ms"] / d["ms"]
        if r.get("peak_mem_mb") and d.get("peak_mem_mb"):
            r["mem_ratio_to_dense"] = r["peak_mem_mb"] / d["peak_mem_mb"]


def format_table(rows: list[dict]) -> str:
    head = f"{'part':<11}{'variant':<14}{'N':>7}{'B':>5}{'ms':>11}{'tok/s':>13}{'peak MB':>10}{'TFLOP/s':>9}{'x dense':>9}{'mem x':>7}"
    lines = [head, "-" * len(head)]

    def f(v, fmt):
        width = int(fmt.split(".")[0].rstrip(",")) if fmt[0].isdigit() else 0
        return format(v, fmt) if isinstance(v, (int, float)) else "-".rjust(width)

    for r in rows:
        if "error" in r:
            lines.append(f"{r['part']:<11}{r['variant']:<14}{r['seq_len']:>7}{r['batch']:>5}  {r['error']}")
            continue
        lines.append(
            f"{r['part']:<11}{r['variant']:<14}{r['seq_len']:>7}{r['batch']:>5}{f(r.get('ms'), '11.3f')}"
            f"{f(r.get('tokens_per_sec'), '13,.0f')}{f(r.get('peak_mem_mb'), '10.0f')}{f(r.get('tflops'), '9.1f')}"
            f"{f(r.get('ratio_to_dense'), '9.2f')}{f(r.get('mem_ratio_to_dense'), '7.2f')}"
        )
    return "\n".join(lines)


def format_decode_table(rows: list[dict]) -> str:
    head = f"{'variant':<11}{'ctx':>8}{'B':>4}{'tok/s':>12}{'x dense':>9}{'TTFT ms':>10}{'KV MB':>10}{'KV x':>7}{'kern':>6}  path"
    lines = [head, "-" * len(head)]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['variant']:<11}{r['seq_len']:>8}{r['batch']:>4}  {r['error']}")
            continue
        speed = 1 / r["ratio_to_dense"] if r.get("ratio_to_dense") else None

        def f(v, fmt):
            width = int(re.match(r"\d+", fmt).group())
            return format(v, fmt) if isinstance(v, (int, float)) else "-".rjust(width)

        lines.append(
            f"{r['variant']:<11}{r['seq_len']:>8}{r['batch']:>4}{f(r['tokens_per_sec'], '12,.0f')}"
            f"{f(speed, '9.2f')}{f(r.get('prefill_ms'), '10.1f')}{f(r.get('kv_cache_mb'), '10.1f')}"
            f"{f(r.get('kv_ratio_to_dense'), '7.3f')}{f(r.get('kernels_per_token'), '6d')}  {r.get('decode_path')}"
        )
    return "\n".join(lines)
