"""Selection recall of a trained needle model: is the needle's block among the blocks each layer and KV
head chose at the position that predicts the answer, and how accurate is the model with and without it.

    python experiments/selection/recall.py CHECKPOINT RUN_CONFIG [EXAMPLES]

CHECKPOINT: a run's checkpoints/last.ckpt (or hub/ folder); RUN_CONFIG: its .hydra/config.yaml (the
needle's data settings). Runs on the CPU in a minute for 280 examples.
"""

from __future__ import annotations

import sys

import torch
import yaml

from halo_lab.data.synthetic import NeedleDataset
from halo_lab.hub import load_from_hub
from halo_lab.model.attention import masked


def main() -> None:
    model = load_from_hub(sys.argv[1]).eval()
    run = yaml.safe_load(open(sys.argv[2]))
    d, c = run["data"], model.config
    ds = NeedleDataset(
        num_examples=int(sys.argv[3]) if len(sys.argv) > 3 else 280, seq_len=d["seq_len"],
        distances=d["distances"], num_pairs=d["num_pairs"], key_len=1, value_len=1,
        vocab_size=c.vocab_size, seed=run["seed"], split="val", control=False,
    )  # fmt: skip
    chosen: list[torch.Tensor] = []
    select = masked.select

    def spy(*args, **kwargs):  # the masked backend's choice, layer by layer
        sel = select(*args, **kwargs)
        chosen.append(sel.blocks.clone())
        return sel

    masked.select = spy
    hits, correct, far = [], [], []
    with torch.no_grad():
        for i in range(len(ds)):
            x, y, dist = ds[i]
            chosen.clear()
            logits = model(x[None])[0][0]
            p = int((y != -100).nonzero()[0])
            block = (p + 1 - int(dist)) // c.select_block_size  # the needle's value token's block
            hits.append([[int((r[0, h, p] == block).any()) for h in range(r.shape[1])] for r in chosen])
            correct.append(bool(logits[p].argmax() == y[p]))
            far.append(int(dist) > c.local_window)
    hit, ok, far = torch.tensor(hits).float(), torch.tensor(correct), torch.tensor(far)
    anyhit = hit.amax((1, 2)) > 0
    print(f"accuracy {ok.float().mean():.3f} ({len(ds)} examples)")
    print("needle block chosen, layer x KV head:", [[round(v, 2) for v in row] for row in hit.mean(0).tolist()])
    print(f"accuracy when some layer and head chose it: {ok[anyhit].float().mean():.3f} (n={int(anyhit.sum())})")
    if (~anyhit).any():
        print(f"accuracy when none did: {ok[~anyhit].float().mean():.3f} (n={int((~anyhit).sum())})")
    print(f"beyond the window: accuracy {ok[far].float().mean():.3f}, chosen by some head {anyhit[far].float().mean():.3f}")


if __name__ == "__main__":
    main()
