"""HALO-S and its dense twin: embeddings, RoPE, pre-norm blocks, SwiGLU/GELU FFN, LM head.

Plain PyTorch: no Lightning or Hydra here. State-dict names follow the reference package (pyhalos 2.2.1)
where the parts are the same, so its checkpoints map onto these modules (see halo_lab.checkpoint.compat).
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from halo_lab import graph
from halo_lab.config import HaloConfig
from halo_lab.generation import generate as _generate
from halo_lab.graph import selection
from halo_lab.kernels.rope import rope_qk
from halo_lab.model import attention as attn
from halo_lab.model.conv import CausalConv
from halo_lab.model.layers import FeedForward, RotaryEmbedding, make_norm
from halo_lab.utils import count_parameters as _count_parameters


class Attention(nn.Module):
    """Grouped-query self-attention over the HALO graph (arch="halo") or dense causal (arch="dense")."""

    def __init__(self, config: HaloConfig, layer: int, arch: str, record: attn.BackendRecord | None = None):
        super().__init__()
        self.config, self.layer, self.arch = config, layer, arch
        self.record = record  # the model's BackendRecord: what each call really ran
        d = config.head_dim
        self.q_proj = nn.Linear(config.hidden_size, config.num_heads * d, bias=False)
        self.k_proj = nn.Linear(config.hidden_size, config.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(config.hidden_size, config.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(config.num_heads * d, config.hidden_size, bias=False)
        self.dropout = nn.Dropout(config.dropout)
        # the learned summary pooling of content-selected blocks: zeros give the plain mean
        learned = arch == "halo" and config.selects and config.select_pooling == "learned"
        self.select_pool = nn.Parameter(torch.zeros(config.num_kv_heads, d)) if learned else None
        # the summary keys' learned logit bias per KV head (select_summary_bias), from its initial value
        biased = arch == "halo" and config.selects and config.select_summary_keys
        bias = config.select_summary_bias if biased else None
        self.select_bias = (
            nn.Parameter(torch.full((config.num_kv_heads,), float(bias))) if bias is not None else None
        )
        # the chosen tokens' learned logit bias per KV head (select_token_bias), from its initial value
        tb = config.select_token_bias if arch == "halo" and config.selects else None
        self.select_token_bias = (
            nn.Parameter(torch.full((config.num_kv_heads,), float(tb))) if tb is not None else None
        )
        # the choice's own low-rank router (select_router_rank, graph.selection.route_queries): down is drawn
        # by _CausalLM.reset_parameters after the other weights (which a router then leaves as they were)
        r, hq, hkv = config.select_router_rank if arch == "halo" else 0, config.num_heads, config.num_kv_heads
        self.select_route_down = nn.Parameter(torch.empty(hq, d, r)) if r else None
        self.select_route_up = nn.Parameter(torch.zeros(hq, r, d)) if r else None
        self.select_route_key_down = nn.Parameter(torch.empty(hkv, d, r)) if r else None
        self.select_route_key_up = nn.Parameter(torch.zeros(hkv, r, d)) if r else None
        # the routing loss on this many queries in training (0: off; _CausalLM.set_routing_queries); dense
        # causal attention in training forwards while set (HALO-S's dense warm-up; set_dense_warmup)
        self.routing_queries, self.routing, self.dense_warmup = 0, None, False

    @property
    def router(self) -> tuple[torch.Tensor, ...] | None:
        """The choice's router (graph.selection.route_queries, route_keys), None without one."""
        names = ("select_route_down", "select_route_up", "select_route_key_down", "select_route_key_up")
        return None if self.select_route_down is None else tuple(getattr(self, n) for n in names)

    def forward(self, x, cos, sin, step: int, cache: attn.KVCache | None = None, pos=None) -> torch.Tensor:
        B, T, _ = x.shape
        cfg, d = self.config, self.config.head_dim
        q = self.q_proj(x).view(B, T, cfg.num_heads, d).transpose(1, 2)
        k = self.k_proj(x).view(B, T, cfg.num_kv_heads, d).transpose(1, 2)
        if pos is None:  # one fused kernel on CUDA (kernels/rope.py)
            q, k = rope_qk(q, k, cos, sin)
        else:  # the decode step captured in a CUDA graph keeps the eager ops (no JIT while capturing)
            q, k = attn.apply_rope(q, cos, sin), attn.apply_rope(k, cos, sin)
        v = self.v_proj(x).view(B, T, cfg.num_kv_heads, d).transpose(1, 2)
        if pos is not None:  # one token per row at a device-side position (CUDA-graph friendly)
            y = attn.static_decode_attention(q, k, v, cache, pos)
        elif cache is None or cache.length == 0:  # whole sequence (or a cache prefill)
            if cache is not None:
                cache.append(k, v)
            warm = self.dense_warmup and self.training and self.arch == "halo"
            if self.arch == "dense" or warm:
                y = attn.dense_attention(q, k, v)
                if warm and self.record is not None:
                    self.record.note("dense")
            else:
                backend = attn.resolve_backend(cfg, x.device, T)
                pool, bias, token_bias = self.select_pool, self.select_bias, self.select_token_bias
                y = attn.halo_attention(
                    q, k, v, cfg, self.layer, step, backend, self.record, pool, bias, token_bias, self.router
                )
            routed = self.routing_queries and self.training and cfg.selects and torch.is_grad_enabled()
            self.routing = (
                selection.routing_loss(
                    q, k, v, cfg, self.routing_queries, step, self.select_pool, self.router
                )
                if routed
                else None
            )
        else:  # decoding: the new positions attend into the cache
            start = cache.length
            k_all, v_all = cache.append(k, v)
            if self.arch == "dense":
                y = attn.dense_decode_attention(q, k_all, v_all)
            else:
                text_start, pool, bias = start - cfg.num_globals, self.select_pool, self.select_bias
                y = attn.halo_decode_attention(
                    q, k_all, v_all, cfg, self.layer, step, text_start, pool, bias, self.select_token_bias,
                    self.router,
                )  # fmt: skip
        return self.dropout(self.o_proj(y.transpose(1, 2).reshape(B, T, -1)))

    def decode_qkv(self, qkv: torch.Tensor, cos, sin, cache: attn.KVCache, pos: torch.Tensor) -> torch.Tensor:
        """One decode step's attention from the stacked q/k/v projections ([B, (Hq + 2 Hkv) d] rows, see
        ``Block.fused_decode_weights``): RoPE, cache write, attention over the K keys; [B, Hq d]."""
        c, d, B = self.config, self.config.head_dim, qkv.shape[0]
        q, k, v = qkv.split([c.num_heads * d, c.num_kv_heads * d, c.num_kv_heads * d], dim=-1)
        q = attn.apply_rope(q.view(B, 1, c.num_heads, d).transpose(1, 2), cos, sin)
        k = attn.apply_rope(k.view(B, 1, c.num_kv_heads, d).transpose(1, 2), cos, sin)
        v = v.view(B, 1, c.num_kv_heads, d).transpose(1, 2)
        return attn.static_decode_attention(q, k, v, cache, pos).transpose(1, 2).reshape(B, -1)

    def decode_key_slots(self, cache: attn.KVCache, pos: torch.Tensor) -> torch.Tensor | None:
        """[K] cache slots of the one-token step's keys at ``pos`` (-1 = no edge), the same for every row and
        head; None where the step's attention is not over such a list (dense: the whole cache;
        content-selected blocks: keys chosen per row and head). For a kernel that attends by itself
        (``halo_lab.kernels.decode_attn_o``)."""
        lay = cache.layout
        if lay is None or lay.select is not None:
            return None
        return attn.decode_key_slots(lay, pos)

    def decode_key_slot_table(self, cache: attn.KVCache) -> torch.Tensor | None:
        """``decode_key_slots`` of every decode position at once, [rows, K] (``attn.decode_key_slot_table``);
        None where ``decode_key_slots`` is None."""
        lay = cache.layout
        if lay is None or lay.select is not None:
            return None
        return attn.decode_key_slot_table(lay)

    def decode_attend(self, q: torch.Tensor, cache: attn.KVCache, pos: torch.Tensor) -> torch.Tensor:
        """``decode_qkv``'s attention alone, for a step whose kernel already roped q ([B, Hq, 1, d]) and k and
        wrote k and v into the cache (``halo_lab.kernels.decode_qkv``); [B, Hq d]."""
        return attn.static_decode_attend(q, cache, pos).transpose(1, 2).reshape(q.shape[0], -1)


_PLAIN_ATTENTION = {"q_proj", "k_proj", "v_proj", "o_proj", "dropout"}


class Block(nn.Module):
    def __init__(self, config: HaloConfig, layer: int, arch: str, record: attn.BackendRecord | None = None):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.conv = CausalConv(config.hidden_size, config.short_conv) if config.short_conv else None
        self.attn = Attention(config, layer, arch, record)
        self.ln_2 = make_norm(config)
        self.ffn = FeedForward(config)

    def forward(self, x, cos, sin, step: int, cache: attn.KVCache | None = None, pos=None) -> torch.Tensor:
        h = self.ln_1(x)
        if self.conv is not None:  # before attention (and before the cache append, which attn does)
            h = self.conv(h, cache, pos)
        x = x + self.attn(h, cos, sin, step, cache, pos)
        return x + self.ffn(self.ln_2(x))

    def fused_decode_weights(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(W_qkv, W_up) for a fused decode step: the q/k/v projection weights stacked, and the FFN's gate
        and up weights stacked; None when this block is not the plain pre-norm attention + FFN block whose
        math the fused step repeats (a short conv, biases, or a replaced submodule): then the decoder runs
        the block itself."""
        a, f = self.attn, self.ffn
        plain = (
            {name for name, m in self._modules.items() if m is not None} == {"ln_1", "attn", "ln_2", "ffn"}
            and {name for name, m in a._modules.items() if m is not None} == _PLAIN_ATTENTION
            and type(a) is Attention
            and type(f) is FeedForward
            and all(type(m) is nn.Linear and m.bias is None for m in (a.q_proj, a.k_proj, a.v_proj, f.w1))
            and (f.w3 is None or type(f.w3) is nn.Linear and f.w3.bias is None)
        )
        if not plain:
            return None
        w_qkv = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).detach()
        w_up = f.w1.weight if f.w3 is None else torch.cat([f.w1.weight, f.w3.weight])
        return w_qkv.contiguous(), w_up.detach().contiguous()


class _CausalLM(nn.Module):
    """Shared body of HaloSModel and BaselineModel."""

    arch = "halo"

    def __init__(self, config: HaloConfig):
        super().__init__()
        if isinstance(config, dict):
            config = HaloConfig.from_dict(config)
        self.config = config
        self.num_globals = config.num_globals if self.arch == "halo" else 0
        self.token_emb = nn.Embedding(config.vocab_size, config.hidden_size)
        if self.num_globals:
            self.global_memory = nn.Parameter(torch.zeros(self.num_globals, config.hidden_size))
        self.rope = RotaryEmbedding(config.head_dim, config.max_seq_len + self.num_globals, config.rope_base)
        self.backend_record = attn.BackendRecord()  # the attention backends that really ran
        self.layers = nn.ModuleList(
            Block(config, i, self.arch, self.backend_record) for i in range(config.num_layers)
        )
        self.ln_f = make_norm(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._graph_step = 0
        self._gradient_checkpointing = False
        self.reset_parameters()

    def reset_parameters(self) -> None:
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.num_layers)
        for name, p in self.named_parameters():
            if p.dim() == 2 and name.endswith("weight") or name == "global_memory":
                out_proj = name.endswith(("o_proj.weight", "w2.weight"))
                nn.init.normal_(p, std=residual_std if out_proj else std)
        for name, p in self.named_parameters():  # last: the other weights as without a router
            if name.endswith(("select_route_down", "select_route_key_down")):
                nn.init.normal_(p, std=1.0 / math.sqrt(self.config.head_dim))
        if self.config.tie_embeddings:
            self.lm_head.weight = self.token_emb.weight

    # ---------------------------------------------------------------------------- training controls
    def set_graph_step(self, step: int) -> None:
        """Select the training step's random edges (the trainer's global step: the same on every rank)."""
        self._graph_step = int(step)

    def enable_gradient_checkpointing(self) -> None:
        self._gradient_checkpointing = True

    def disable_gradient_checkpointing(self) -> None:
        self._gradient_checkpointing = False

    def set_routing_queries(self, count: int) -> None:
        """Compute the selection's routing loss (graph.selection.routing_loss) on ``count`` queries a layer in
        each training forward (0: off); ``routing_loss`` reads it."""
        for layer in self.layers:
            layer.attn.routing_queries = count

    def set_dense_warmup(self, on: bool) -> None:
        """HALO-S's training forwards with dense causal attention while ``on`` (DSA's dense warm-up: the
        lookups form over every key before the graph and the selection restrict them); evaluation,
        generation and the decode step keep the graph."""
        for layer in self.layers:
            layer.attn.dense_warmup = bool(on)

    def routing_loss(self) -> torch.Tensor | None:
        """The mean over layers of the last training forward's routing losses; None when none ran."""
        losses = [layer.attn.routing for layer in self.layers if layer.attn.routing is not None]
        return torch.stack(losses).mean() if losses else None

    # ---------------------------------------------------------------------------- forward
    def _run(self, input_ids: torch.Tensor, caches: list[attn.KVCache] | None = None) -> torch.Tensor:
        B, T = input_ids.shape
        past = caches[0].length if caches else 0
        text_len = (past - self.num_globals if past else 0) + T
        if text_len > self.config.max_seq_len:
            raise ValueError(f"sequence of {text_len} tokens exceeds max_seq_len={self.config.max_seq_len}")
        x = self.token_emb(input_ids)
        if self.num_globals and past == 0:
            x = torch.cat([self.global_memory.to(x.dtype).expand(B, -1, -1), x], dim=1)
        cos, sin = self.rope(past, x.shape[1], x.dtype)
        step = self._graph_step if self.training else graph.EVAL_STEP
        for i, layer in enumerate(self.layers):
            cache = caches[i] if caches else None
            if self._gradient_checkpointing and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(layer, x, cos, sin, step, cache, use_reentrant=False)
            else:
                x = layer(x, cos, sin, step, cache)
        x = self.ln_f(x)
        return x[:, self.num_globals :] if past == 0 else x

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None):
        """Logits [B, T, V] and, with targets, the mean cross-entropy over targets != -100."""
        logits = self.lm_head(self._run(input_ids))
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-100)
        return logits, loss

    def forward_cached(
        self, input_ids: torch.Tensor, caches: list[attn.KVCache] | None, *, last_only: bool = False
    ) -> torch.Tensor:
        """Logits [B, T, V] (``last_only``: [B, 1, V]) of ``input_ids`` that continue what ``caches`` hold
        (one cache per layer from ``new_caches``; the caches are filled as it goes). With empty caches this
        is the prefill; None runs without a cache."""
        x = self._run(input_ids, caches)
        return self.lm_head(x[:, -1:] if last_only else x)

    # ---------------------------------------------------------------------------- generation
    def new_caches(
        self,
        batch: int,
        capacity: int,
        device,
        dtype,
        ring: bool = False,
        prompt_len: int = 0,
        *,
        decode_kernel: bool = False,
    ) -> list[attn.KVCache]:
        """One cache per layer for ``capacity`` text tokens; HALO caches carry the eval graph's decode layout.

        ``ring=True`` (HALO-S): a bounded cache for a prompt of ``prompt_len`` tokens (see attn.KVCache).
        ``decode_kernel``: the one-token step reads its keys through the Triton decode kernel where it runs
        and passes its check (CUDA), else through the gather path."""
        c = self.config
        # the Triton decode kernel reads the fixed graph's keys only: selection runs the gather path
        fixed = self.arch == "halo" and not c.selects
        kernel = attn.decode_kernel_op(device, dtype) if decode_kernel and fixed else None
        caches = []
        for i, _ in enumerate(self.layers):
            layout, slots = None, capacity
            if self.arch == "halo":
                layout, slots = attn.decode_layout(c, i, capacity, device, ring, prompt_len)
                layout.kernel = kernel
            cache = attn.KVCache.empty(batch, c.num_kv_heads, slots, c.head_dim, device, dtype)
            cache.layout = layout
            if layout is not None and layout.select is not None:
                layer = self.layers[i].attn
                cache.add_summaries(
                    c, capacity, layer.select_pool, layer.select_bias, layer.select_token_bias, layer.router
                )
            caches.append(cache)
        return caches

    def decode_step(
        self, tokens: torch.Tensor, pos: torch.Tensor, caches: list[attn.KVCache], rope=None
    ) -> torch.Tensor:
        """Logits [B, V] for one new token per row at full-sequence position ``pos`` ([1] long tensor):
        shapes never depend on the length (compiled and captured by ``halo_lab.generation.Decoder``).

        ``rope``: (cos, sin) tables to read instead of the model's (the Decoder keeps its own copies)."""
        x = self.token_emb(tokens)
        cos_t, sin_t = rope if rope is not None else (self.rope.cos, self.rope.sin)
        cos = cos_t.index_select(0, pos).to(x.dtype)
        sin = sin_t.index_select(0, pos).to(x.dtype)
        for layer, cache in zip(self.layers, caches):
            x = layer(x, cos, sin, graph.EVAL_STEP, cache, pos)
        return self.lm_head(self.ln_f(x))[:, -1]

    def generate(
        self, prompt: str | list[str] | torch.Tensor, tokenizer: Any = None, *args: Any, **kwargs: Any
    ):
        """Sample a continuation: ``halo_lab.generation.generate(self, prompt, ...)`` (its arguments and
        defaults; a loaded model's own ``tokenizer`` is used when none is given)."""
        return _generate(self, prompt, tokenizer, *args, **kwargs)

    # ---------------------------------------------------------------------------- introspection
    def count_parameters(self, trainable_only: bool = False) -> int:
        return _count_parameters(self, trainable_only)

    def summary(self) -> str:
        c = self.config
        lines = [
            f"{type(self).__name__} ({self.arch}): {self.count_parameters() / 1e6:.2f}M parameters",
            f"  layers={c.num_layers} hidden={c.hidden_size} heads={c.num_heads}/{c.num_kv_heads}kv "
            f"head_dim={c.head_dim} vocab={c.vocab_size} max_seq_len={c.max_seq_len}",
            f"  ffn={'SwiGLU' if c.use_swiglu else 'GELU'} x{c.ffn_mult} norm={c.norm} dropout={c.dropout}",
        ]
        if self.arch == "halo":
            lines.append(
                f"  graph: K={c.num_neighbors} = {c.num_globals} globals + window {c.local_window} + dilated "
                f"{list(c.dilated_distances)} + {c.num_random} random ({c.random_edges}); "
                f"backend={c.attention_backend}"
            )
            if c.selects:
                m = c.select_group_size
                groups = f", groups of {m} (best {c.select_groups})" if m else ""
                lines.append(
                    f"  selection: the {c.select_blocks} best {c.select_block_size}-token blocks by their summaries"
                    f"{groups}{'' if c.select_summary_keys else ', summaries not keys'}"
                )
        return "\n".join(lines)

    def estimate_flops(
        self, seq_len: int, backend: str | None = None, device: torch.device | str | None = None
    ) -> dict[str, float]:
        """Forward FLOPs of one sequence (multiply-adds x 2), by part.

        ``attention`` counts the graph's edges (what the reference gather computes), the content-selected
        keys included; ``attention_kernel`` counts what the chosen backend really computes (whole tiles for
        flex, the full causal triangle for dense SDPA). ``global`` is the share of ``attention`` spent on
        global keys; ``selection`` the scoring of block summaries that chooses the blocks. ``auto`` resolves on
        ``device``: default the model's own, or for a meta-device model (built from a config alone) the
        best device here, where it would run."""
        c, d = self.config, self.config.head_dim
        G, L = self.num_globals, seq_len + self.num_globals
        per_edge = 4 * c.num_heads * d  # QK^T and PV
        if self.arch == "dense":
            edges = kernel_edges = L * (L + 1) / 2
            global_edges = scored = 0.0
        else:
            idx = graph.full_neighbor_index(c, 0, graph.EVAL_STEP, seq_len, "cpu")
            positions = torch.arange(seq_len)
            selected = float(selection.keys_per_query(c, positions).sum())
            scored = float(selection.summaries_per_query(c, positions).sum())
            edges = float((idx >= 0).sum()) + selected
            global_edges = float(G * seq_len + G * (G + 1) / 2)
            if device is None:
                device = next(self.parameters()).device
                if device.type == "meta":
                    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            backend = backend or attn.resolve_backend(c, torch.device(device), L)
            if backend == "flex":
                layout = graph.block_layout(c, 0, graph.EVAL_STEP, seq_len, "cpu")
                kernel_edges = layout.computed_blocks * c.graph_block_size**2
            elif backend == "masked":  # SDPA with a boolean mask does the causal triangle's work
                summaries = sum(selection.num_summaries(c, seq_len)) if c.selects else 0
                kernel_edges = L * (L + 1) / 2 + L * summaries
            elif backend == "triton":  # tensor-core tiles per 32-position query tile (kernels/halo_attention)
                window = -(-(32 + c.local_window - 1) // 32) * 32
                extra = 16 + 32 * len(c.dilated_distances) + (64 if c.random_edges == "token" else 0)
                kernel_edges = float(L * (window + extra)) + selected
            else:
                kernel_edges = float(idx.numel()) + selected
        proj = 2 * L * c.hidden_size * (2 * c.num_heads * d + 2 * c.num_kv_heads * d)
        ffn = 2 * L * c.hidden_size * c.ffn_mult * c.hidden_size * (3 if c.use_swiglu else 2)
        n = c.num_layers
        out = {
            "attention": n * per_edge * edges,
            "attention_kernel": n * per_edge * kernel_edges,
            "global": n * per_edge * global_edges,
            "projections": n * proj,
            "ffn": n * ffn,
            "lm_head": 2 * seq_len * c.hidden_size * c.vocab_size,
            "selection": n * 2 * c.num_heads * d * scored,  # q . summary for every scored summary
        }
        parts = ("attention", "selection", "projections", "ffn", "lm_head")
        out["total"] = sum(out[k] for k in parts)
        return out

    @classmethod
    def from_pretrained(cls, path: str, **kwargs: Any):
        """Load a saved model (local directory, file or Hub repo id); see halo_lab.hub.load_from_hub."""
        from halo_lab.checkpoint.weights import load_pretrained

        model = load_pretrained(path, build_model, **kwargs)
        if cls is not _CausalLM and not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a {cls.__name__}")
        return model


class HaloSModel(_CausalLM):
    """HALO-S: G learned global tokens are prepended; attention follows the sparse graph (halo_lab.graph)."""

    arch = "halo"


class BaselineModel(_CausalLM):
    """The dense Transformer baseline: the same blocks with causal SDPA and no global tokens."""

    arch = "dense"


ARCHS = {"halo": HaloSModel, "dense": BaselineModel}


def build_model(config: HaloConfig | dict, arch: str = "halo") -> _CausalLM:
    """Build HaloSModel (arch="halo") or BaselineModel (arch="dense") from a config or a plain dict."""
    if arch not in ARCHS:
        raise ValueError(f"arch={arch!r}: must be one of {sorted(ARCHS)}")
    if isinstance(config, dict):
        config = HaloConfig.from_dict(config)
    return ARCHS[arch](config)
