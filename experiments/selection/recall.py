"""Selection recall of a trained needle or MQAR model: is the answer's block among the blocks each layer
and KV head chose at the position that predicts the answer, and how accurate is the model with and
without it.

    python experiments/selection/recall.py CHECKPOINT RUN_CONFIG [EXAMPLES]

CHECKPOINT: a run's checkpoints/last.ckpt (or hub/ folder); RUN_CONFIG: its .hydra/config.yaml (the
task's data settings: ``data.dataset`` needle or mqar). Runs on the CPU in a minute for 280 examples.
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
        yield x, y, [(p, p + 1 - int(dist), int(dist) > c.local_window)]


def mqar_queries(d: dict, c, seed: int, n: int):
    ds = AssociativeRecallDataset(
        num_examples=n, seq_len=d["seq_len"], vocab_size=d["vocab_size"], num_pairs=d["num_pairs"],
        num_queries=d["num_queries"], key_len=d["key_len"], value_len=d["value_len"], seed=seed,
        split="val", layout=d["layout"],
    )  # fmt: skip
    for i in range(len(ds)):
        ex = ds.example(i)
        x, y = torch.from_numpy(ex["input"].copy()), torch.from_numpy(ex["targets"])
        rec = ex["records"][ex["asked"]]
        yield (
            x,
            y,
            [
                (int(p), int(r), int(dd) > c.local_window)
                for p, r, dd in zip(ex["scored"], rec, ex["distances"])
            ],
        )


def main() -> None:
    model = load_from_hub(sys.argv[1]).eval()
    run = yaml.safe_load(open(sys.argv[2]))
    d, c = run["data"], model.config
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 280
    queries = (mqar_queries if d["dataset"] == "mqar" else needle_queries)(d, c, run["seed"], n)
    chosen: list[torch.Tensor] = []
    select = masked.select

    def spy(*args, **kwargs):  # the masked backend's choice, layer by layer
        sel = select(*args, **kwargs)
        chosen.append(sel.blocks.clone())
        return sel

    masked.select = spy
    hits, correct, far, cands = [], [], [], []
    with torch.no_grad():
        for x, y, scored in queries:
            chosen.clear()
            logits = model(x[None])[0][0]
            for p, at, beyond in scored:
                block = at // c.select_block_size
                ncand = int(candidate_blocks(c, torch.tensor([p]))[0])
                inwin = block >= ncand  # read by the window, not by selection
                hits.append(
                    [[int(inwin or (r[0, h, p] == block).any()) for h in range(r.shape[1])] for r in chosen]
                )
                correct.append(bool(logits[p].argmax() == y[p]))
                far.append(beyond)
                cands.append(ncand)
    hit, ok, far, cands = (
        torch.tensor(hits).float(),
        torch.tensor(correct),
        torch.tensor(far),
        torch.tensor(cands),
    )
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
                f"head {anyhit[m].float().mean():.3f}, by layer 2's heads {hit[m, -1].mean():.3f} (n={int(m.sum())})"
            )


if __name__ == "__main__":
    main()
