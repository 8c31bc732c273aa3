"""Selection recall of a trained needle or MQAR model: is the answer's block among the blocks each layer
and KV head chose at the position that predicts the answer, and how accurate is the model with and
without it.

    python experiments/selection/recall.py CHECKPOINT RUN_CONFIG [EXAMPLES]

CHECKPOINT: a run's checkpoints/last.ckpt (or hub/ folder); RUN_CONFIG: its .hydra/config.yaml (the
task's data settings: ``data.dataset`` needle or mqar). EXAMPLES: the first of the run's validation
examples (default: all ``data.num_val``, the haystacks the run's validation read). Runs on the GPU where
there is one (the masked backend: the reference attention), else on the CPU (a minute for 280 examples at
256 tokens). Prints the totals, then a row per needle distance (MQAR: per distance bucket, as the run's
``acc@`` metrics): where the misses are, and whether the answer's block was chosen there.
For the needle the answer's block is the one holding the needle's value; for MQAR (the zoology layout)
the one holding the queried record (its key and value are adjacent, in one block when b is even).
Blocks that are not candidates of the query (in or overlapping its window) are read by the window:
they count as chosen.
"""

from __future__ import annotations

import sys

import torch
import yaml

from halo_lab.data.synthetic import AssociativeRecallDataset, NeedleDataset
from halo_lab.graph.selection import candidate_blocks
from halo_lab.hub import load_from_hub
from halo_lab.model.attention import masked


def needle_queries(d: dict, c, seed: int, n: int):
    """(input, [(scored position, answer's text position, far)]) per validation example."""
    ds = NeedleDataset(
        num_examples=n, seq_len=d["seq_len"], distances=d["distances"], num_pairs=d["num_pairs"],
        key_len=1, value_len=1, vocab_size=c.vocab_size, seed=seed, split="val", control=False,
    )  # fmt: skip
    for i in range(len(ds)):
        x, y, dist = ds[i]
        p = int((y != -100).nonzero()[0])
        yield x, y, [(p, p + 1 - int(dist), int(dist))]


def mqar_queries(d: dict, c, seed: int, n: int):
    ds = AssociativeRecallDataset(
        num_examples=n, seq_len=d["seq_len"], vocab_size=d["vocab_size"], num_pairs=d["num_pairs"],
        num_queries=d["num_queries"], key_len=d["key_len"], value_len=d["value_len"], seed=seed,
        split="val", layout=d["layout"], distance_buckets=d.get("distance_buckets"),
    )  # fmt: skip
    for i in range(len(ds)):
        ex = ds.example(i)
        x, y = torch.from_numpy(ex["input"].copy()), torch.from_numpy(ex["targets"])
        rec = ex["records"][ex["asked"]]
        buckets = ds.bucket(ex["distances"])  # the run's acc@ table's rows: a distance's bucket
        yield x, y, [(int(p), int(r), int(dd)) for p, r, dd in zip(ex["scored"], rec, buckets)]


def main() -> None:
    model = load_from_hub(sys.argv[1]).eval()
    run = yaml.safe_load(open(sys.argv[2]))
    d, c = run["data"], model.config
    if not c.selects:
        print(
            f"{sys.argv[1]}: the model chooses no blocks (select_blocks={c.select_blocks}): nothing to read"
        )
        return
    n = int(sys.argv[3]) if len(sys.argv) > 3 else int(d["num_val"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    c.attention_backend = "masked"  # the layers share c; auto is the fused kernels on CUDA, and the spy
    # below reads the masked backend's select()
    queries = (mqar_queries if d["dataset"] == "mqar" else needle_queries)(d, c, run["seed"], n)
    chosen: list[torch.Tensor] = []
    select = masked.select

    def spy(*args, **kwargs):  # the masked backend's choice, layer by layer
        sel = select(*args, **kwargs)
        chosen.append(sel.blocks.clone())
        return sel

    masked.select = spy
    hits, correct, dists, cands = [], [], [], []
    with torch.no_grad():
        for x, y, scored in queries:
            chosen.clear()
            logits = model(x[None].to(device))[0][0].cpu()
            for p, at, dist in scored:
                block = at // c.select_block_size
                ncand = int(candidate_blocks(c, torch.tensor([p]))[0])
                inwin = block >= ncand  # read by the window, not by selection
                hits.append(
                    [[int(inwin or (r[0, h, p] == block).any()) for h in range(r.shape[1])] for r in chosen]
                )
                correct.append(bool(logits[p].argmax() == y[p]))
                dists.append(dist)
                cands.append(ncand)
    hit, ok, dist, cands = (
        torch.tensor(hits).float(),
        torch.tensor(correct),
        torch.tensor(dists),
        torch.tensor(cands),
    )
    report(hit, ok, dist, cands, c.local_window)


def report(hit, ok, dist, cands, window: int) -> None:
    """The totals, by candidate count, and by distance. hit [answers, layers, KV heads]: the answer's block
    chosen (or read by the window); ok: answered right; dist: the answer's distance (MQAR: its bucket's
    lower edge); cands: candidates."""
    far = dist > window
    anyhit = hit.amax((1, 2)) > 0
    print(f"accuracy {ok.float().mean():.3f} ({len(ok)} answers)")
    print(
        "answer's block chosen, layer x KV head:",
        [[round(v, 2) for v in row] for row in hit.mean(0).tolist()],
    )
    print(
        f"accuracy when some layer and head chose it: {ok[anyhit].float().mean():.3f} (n={int(anyhit.sum())})"
    )
    if (~anyhit).any():
        print(f"accuracy when none did: {ok[~anyhit].float().mean():.3f} (n={int((~anyhit).sum())})")
    print(
        f"beyond the window: accuracy {ok[far].float().mean():.3f}, chosen by some head {anyhit[far].float().mean():.3f}"
    )
    for lo, hi in ((0, 8), (8, 16), (16, 32), (32, 64), (64, 1 << 30)):
        m = (cands >= lo) & (cands < hi)
        if m.any():
            print(
                f"candidates {lo}-{min(hi, int(cands.max()))}: accuracy {ok[m].float().mean():.3f}, chosen by some "
                f"head {anyhit[m].float().mean():.3f}, by the last layer's heads {hit[m, -1].mean():.3f} (n={int(m.sum())})"
            )
    print("distance: answers, accuracy, chosen by some head, by each layer (any head), misses not chosen")
    for value in sorted(set(dist.tolist())):
        m = dist == value
        layers = [round(v, 3) for v in hit[m].amax(2).mean(0).tolist()]
        unrouted = int((~ok[m] & ~anyhit[m]).sum())
        print(
            f"{value:6d}: {int(m.sum()):4d}, {ok[m].float().mean():.4f}, {anyhit[m].float().mean():.4f}, "
            f"{layers}, {unrouted} of {int((~ok[m]).sum())}"
        )


if __name__ == "__main__":
    main()
