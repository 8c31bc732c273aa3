"""The decoder's side of the persistent decode step (``halo_lab.kernels.decode_step``): the whole batch-1
step of a HALO-S model in one launch, with a grid barrier between its phases.

``PersistentStep`` stacks the layers' weights (a second copy of the model's, ~62 MB for the medium model)
and their KV caches (each layer's cache becomes a view of one [L, 1, Hkv, S, d] buffer, so that the kernel
reaches every layer's cache from one pointer). Each layer's key slots at every decode position are one
table, built once (the attention's ``decode_key_slot_table``; the kernel reads the position's row; dense
attends to every slot up to the position), and so are the slots each position's key and value are written
to (``cache.decode_write_slots``; dense's, the position itself, are computed per step). The kernel reads
the token's embedding row itself: a HALO-S step is the one launch, with nothing computed around it.
``why_not`` says why a model or a cache cannot take it (then the decoder keeps its per-kernel step).
"""

from __future__ import annotations

import torch

from halo_lab.generation.step_kernels import norm_kind


def _norm(norm: torch.nn.Module) -> tuple[str, float, bool] | None:
    """(kind, eps, has a bias) of a norm the kernel fuses, None for any other."""
    if not isinstance(norm, (torch.nn.LayerNorm, torch.nn.RMSNorm)) or norm.weight is None:
        return None
    return (*norm_kind(norm), getattr(norm, "bias", None) is not None)


def _model_problem(model) -> str | None:
    """Why the kernel cannot compute this model's step (norms, head, FFN, sizes), or None."""
    from halo_lab.kernels import gemv as kg

    norms = {_norm(n) for n in [model.ln_f] + [n for layer in model.layers for n in (layer.ln_1, layer.ln_2)]}
    if len(norms) != 1 or None in norms:
        return f"norms {norms}: one kind (LayerNorm or RMSNorm, with a weight) and eps everywhere"
    if model.lm_head.bias is not None:
        return "an LM head with a bias"
    if any(layer.ffn.w3 is None for layer in model.layers):
        return "a GELU FFN (the persistent step's FFN is SwiGLU)"
    c = model.config
    group = c.num_heads // c.num_kv_heads
    if group & (group - 1) or c.head_dim & (c.head_dim - 1):
        return f"{group} query heads a KV head, head_dim {c.head_dim}: the kernel needs powers of two"
    widths = (c.hidden_size, c.num_heads * c.head_dim, model.layers[0].ffn.w2.weight.shape[1])
    if max(widths) > kg.MAX_CHUNK:
        return f"rows wider than {kg.MAX_CHUNK} columns: {widths}"
    return None


def _write_slots(pos: torch.Tensor, cache) -> torch.Tensor:
    """[n, 2] the cache slots the positions ``pos`` ([n] long) write their key and value to, -1: none."""
    from halo_lab.kernels import decode_qkv as kq

    written = kq.write_slots(pos, *cache.decode_write_slots())
    return torch.stack(written + [torch.full_like(pos, -1)] * (2 - len(written)), dim=1)


def why_not(model, fused, caches, batch: int, pos: torch.Tensor) -> str | None:
    """None if the persistent step can run this decoder's step, else the reason it cannot."""
    from halo_lab.kernels import decode_step as ks

    if not ks.available():
        return "no Triton"
    if batch != 1:
        return f"batch {batch}: the persistent step is for batch 1"
    if fused is None:
        return "a block without fused decode weights"
    for layer, cache in zip(model.layers, caches):
        dense = cache.layout is None  # every earlier slot: the kernel's split-key attention
        if not dense and layer.attn.decode_key_slots(cache, pos) is None:
            return "attention that is neither dense nor over a fixed key list (content-selected blocks)"
    rows = {(int(c.layout.row0), c.layout.rand.shape[0]) for c in caches if c.layout is not None}
    if len(rows) > 1:
        return f"layers whose key-slot tables cover different positions {sorted(rows)}"
    return _model_problem(model)


class PersistentStep:
    """The stacked weights and caches of one decoder, and its step through ``decode_step_op``."""

    # P at most this on a card (None: one program an SM); the interpreter runs P = 1. 66-88 programs ran
    # the step's phases 3.5% faster than 132 on an H100 (experiments/bench/README.md, "Twenty-seventh
    # session"); the decoder's tokens/s with it are not measured yet
    most_programs = None
    # the kernel's ``keep_l2`` (decode_step.py): layers whose weights load marked to stay in L2; None: no
    # marks. Not yet timed
    keep_l2 = None

    def __init__(self, model, fused, caches, device: torch.device):
        from halo_lab.kernels import decode_step as ks

        layers = model.layers
        kind, self.eps, has_bias = _norm(model.ln_f)
        self.norm = kind

        def stack(ts):
            return torch.stack([t.detach() for t in ts]).contiguous()

        weights = [
            stack(w for w, _ in fused),
            stack(layer.attn.o_proj.weight for layer in layers),
            stack(up for _, up in fused),
            stack(layer.ffn.w2.weight for layer in layers),
            model.lm_head.weight.detach().contiguous(),
            stack(layer.ln_1.weight for layer in layers),
            stack(layer.ln_2.weight for layer in layers),
            model.ln_f.weight.detach().contiguous(),
        ]
        if has_bias:
            weights += [
                stack(layer.ln_1.bias for layer in layers),
                stack(layer.ln_2.bias for layer in layers),
            ]
            weights.append(model.ln_f.bias.detach().contiguous())
        self.weights = weights
        self.emb = model.token_emb.weight.detach().contiguous()
        self.x = torch.empty(1, self.emb.shape[1], device=device, dtype=self.emb.dtype)  # the stream, written
        self.k = torch.stack([c.k for c in caches])
        self.v = torch.stack([c.v for c in caches])
        for i, c in enumerate(caches):  # the caches become views of the stacks (prefill writes through them)
            c.k, c.v = self.k[i], self.v[i]
        self.caches = caches
        self.dense = caches[0].layout is None
        self.wslots = None  # dense: computed per step
        if self.dense:  # every earlier slot: no table
            self.slots, self.first = torch.zeros(len(layers), 1, 1, device=device, dtype=torch.long), None
        else:  # every decode position's key and write slots, once: the kernel reads pos's rows
            tables = [layer.attn.decode_key_slot_table(c) for layer, c in zip(layers, caches)]
            self.slots = torch.stack(tables).contiguous()
            self.first = caches[0].layout.row0
            at = self.first + torch.arange(self.slots.shape[1], device=device)
            self.wslots = torch.stack([_write_slots(at, c) for c in caches]).contiguous()
        self.num_heads = model.config.num_heads
        self.programs = ks.programs_for(device)
        if device.type == "cuda" and self.most_programs:
            self.programs = min(self.programs, int(self.most_programs))
        self.flag = torch.zeros(1, device=device, dtype=torch.int32)
        self.op = ks.decode_step_op

    def __call__(
        self, tok: torch.Tensor, pos: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
    ) -> torch.Tensor:
        """Logits [1, V] of the token ``tok`` ([1] long) at full position ``pos``."""
        wslots = self.wslots
        if wslots is None:
            wslots = torch.stack([_write_slots(pos, c) for c in self.caches])
        return self.op(
            self.x, self.weights, self.k, self.v, cos, sin, pos, self.slots,
            pos if self.first is None else self.first, wslots, self.flag, tok.view(1), self.emb,
            self.num_heads, self.norm, self.eps, self.programs, self.dense,
            -1 if self.keep_l2 is None else int(self.keep_l2),
        )  # fmt: skip

    def check(self) -> None:
        """Raise if a grid barrier timed out (its programs were not all resident: the logits are wrong)."""
        if int(self.flag.item()):
            raise RuntimeError(
                f"the persistent decode step's grid barrier timed out with {self.programs} programs: they were "
                "not all resident at once; set Decoder.persistent_step = False"
            )
