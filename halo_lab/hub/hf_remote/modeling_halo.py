"""HALO-S (and its dense twin) for transformers (``trust_remote_code=True``); copied into every halo_lab
export, and it imports no halo_lab module.

The parameters have halo_lab's names, so the export's model.safetensors loads as it is. Attention is
HALO-S's evaluation graph (G global tokens, the local window, dilated edges, random edges fixed per
layer) applied as an L x L boolean mask to SDPA: the same edge rules and the same counter-based hash as
halo_lab/graph.py with its evaluation step, so the logits equal halo_lab's. The mask is O(L^2) memory:
fine up to a few thousand tokens; halo_lab's own kernels are the fast path. With content-selected blocks
(``select_blocks`` > 0) each layer widens the mask by the tokens and block summaries its queries choose
(``selection_mask``: the rules of halo_lab/graph/selection.py; with ``select_summary_bias`` the mask is
additive, each layer's learned bias on the summaries' columns). The graph does not depend on
the sequence length and RoPE is computed per call, so lengths beyond ``max_seq_len`` run (with whatever
quality the model extrapolates to). Generation re-runs the whole sequence per new token (no KV cache):
exact, and simple; halo_lab's ``generate`` has the O(K)-per-token cache.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from .configuration_halo import HaloSConfig

EVAL_STEP = -1  # halo_lab.graph.EVAL_STEP: the step whose random edges evaluation uses
_M32 = 0xFFFFFFFF
_MUL = 0x045D9F3B


# ------------------------------------------------------------------- the graph (halo_lab/graph.py's rules)
def _mix32(x):
    x = ((x ^ (x >> 16)) * _MUL) & _M32
    x = ((x ^ (x >> 16)) * _MUL) & _M32
    return x ^ (x >> 16)


def _stream_key(seed: int, layer: int, step: int) -> int:
    h = _mix32((seed & _M32) ^ 0x9E3779B9)
    h = _mix32(h ^ (layer & _M32))
    return _mix32(h ^ (step & _M32))


def _skip_sorted(rank: torch.Tensor, excluded_sorted: torch.Tensor) -> torch.Tensor:
    for e in range(excluded_sorted.shape[1]):
        rank = rank + (rank >= excluded_sorted[:, e : e + 1]).long()
    return rank


def _sample_distinct(hash_rows: torch.Tensor, pool: torch.Tensor, count: int) -> torch.Tensor:
    picks: list[torch.Tensor] = []
    for slot in range(count):
        u = _mix32(hash_rows ^ ((slot * 0x27D4EB2F) & _M32))
        remaining = (pool - slot).clamp(min=0)
        x = (u * remaining) >> 32
        if picks:
            prev = torch.stack(picks, dim=1).sort(dim=1).values
            prev = torch.where(prev < 0, torch.full_like(prev, 1 << 40), prev)
            x = _skip_sorted(x.unsqueeze(1), prev).squeeze(1)
        picks.append(torch.where(remaining > 0, x, torch.full_like(x, -1)))
    return torch.stack(picks, dim=1) if picks else hash_rows.new_empty(hash_rows.shape[0], 0)


def dilated_distances(c: HaloSConfig) -> tuple[int, ...]:
    scale = c.local_window if c.dilation_rule == "window_multiple" else 1
    return tuple(sorted({o * scale for o in c.dilated_offsets if o * scale >= c.local_window}))


def _random_keys(c: HaloSConfig, layer: int, positions: torch.Tensor) -> torch.Tensor:
    key = _stream_key(c.graph_seed, layer, EVAL_STEP)
    R, W = c.num_random, c.local_window
    if c.random_edges == "token":
        dists = dilated_distances(c)[::-1]
        dil = torch.stack([positions - d for d in dists], 1) if dists else positions[:, None][:, :0]
        pool = (positions - W + 1).clamp(min=0) - (dil >= 0).sum(1)
        ranks = _sample_distinct(_mix32(key ^ (positions & _M32)), pool, R)
        excluded = torch.where(dil >= 0, dil, torch.full_like(dil, 1 << 40))
        keys = _skip_sorted(ranks, excluded.sort(dim=1).values)
        return torch.where(ranks >= 0, keys, torch.full_like(keys, -1))
    units = (positions + c.num_globals) // c.graph_block_size
    first_query = (units * c.graph_block_size - c.num_globals).clamp(min=0)
    pool = (first_query - W + 1).clamp(min=0)
    return _sample_distinct(_mix32(key ^ (units & _M32)), pool, R)


def graph_mask(c: HaloSConfig, layer: int, text_len: int, device) -> torch.Tensor:
    """[L, L] boolean (query, key) adjacency over globals + text, L = num_globals + text_len."""
    G, W = c.num_globals, c.local_window
    pos = torch.arange(text_len, device=device)
    offsets = torch.cat(
        [torch.arange(W, device=device), torch.tensor(dilated_distances(c), dtype=torch.long, device=device)]
    )
    keys = pos[:, None] - offsets[None, :]
    keys = torch.where(keys >= 0, keys, torch.full_like(keys, -1))
    rand = _random_keys(c, layer, pos)
    keys = torch.cat([keys, rand], dim=1)  # a random key equal to a dilated one is one edge: a set
    L = G + text_len
    mask = torch.zeros(L, L + 1, dtype=torch.bool, device=device)
    rows = (pos + G)[:, None].expand_as(keys)
    mask[rows, torch.where(keys >= 0, keys + G, torch.full_like(keys, L))] = True
    mask[G:, :G] = True  # every text token sees every global token
    mask[:G, :G] = torch.ones(G, G, dtype=torch.bool, device=device).tril()  # globals: each other, causally
    return mask[:, :L]


# ----------------------------------------------- content-selected blocks (halo_lab/graph/selection.py)
def _block_weights(v: torch.Tensor, c: HaloSConfig, pool: torch.Tensor) -> torch.Tensor:
    """The learned pooling's weights: softmax over each block of v_t . u / sqrt(d)."""
    B, H, L, d = v.shape
    b, G = c.select_block_size, c.num_globals
    nb = (L - G) // b
    blocks = v[:, :, G : G + nb * b].reshape(B, H, nb, b, d)
    return torch.softmax(torch.einsum("bhnkd,hd->bhnk", blocks.float(), pool.float()) / d**0.5, -1).to(
        v.dtype
    )


def _summaries(x: torch.Tensor, c: HaloSConfig, weights: torch.Tensor | None = None) -> torch.Tensor:
    """Means (or learned-pooling sums) of the complete text blocks of x [B, H, G + N, d], then the means
    of the complete groups of blocks."""
    B, H, L, d = x.shape
    b, m, G = c.select_block_size, c.select_group_size, c.num_globals
    nb = (L - G) // b
    blocks = x[:, :, G : G + nb * b].reshape(B, H, nb, b, d)
    fine = blocks.mean(3) if weights is None else torch.einsum("bhnkd,bhnk->bhnd", blocks, weights)
    if not m:
        return fine
    ng = nb // m
    return torch.cat([fine, fine[:, :, : ng * m].reshape(B, H, ng, m, d).mean(3)], dim=2)


def _scores(qg: torch.Tensor, k: torch.Tensor, sk32: torch.Tensor, c: HaloSConfig) -> torch.Tensor:
    """[B, Hkv, P, S] the summaries' scores before 1/sqrt(d), summed over a KV head's query heads qg [B, Hkv,
    g, P, d]: q . summary key (``select_score`` mean), or Quest's bound sum_d max(q_d min_d, q_d max_d)
    over the block's (group's) keys (``bound``)."""
    if getattr(c, "select_score", "mean") != "bound":
        return torch.einsum("bhgpd,bhsd->bhps", qg, sk32)
    B, H, L, d = k.shape
    b, m, G = c.select_block_size, c.select_group_size, c.num_globals
    nb = (L - G) // b
    blocks = k[:, :, G : G + nb * b].float().reshape(B, H, nb, b, d)
    lo, hi = blocks.amin(3), blocks.amax(3)
    if m:
        ng = nb // m
        lo = torch.cat([lo, lo[:, :, : ng * m].reshape(B, H, ng, m, d).amin(3)], dim=2)
        hi = torch.cat([hi, hi[:, :, : ng * m].reshape(B, H, ng, m, d).amax(3)], dim=2)
    pos, neg = qg.clamp(min=0).sum(2), qg.clamp(max=0).sum(2)
    return torch.einsum("bhpd,bhsd->bhps", pos, hi) + torch.einsum("bhpd,bhsd->bhps", neg, lo)


def _top(scores: torch.Tensor, allowed: torch.Tensor, count: int) -> torch.Tensor:
    """Indices of the ``count`` best allowed scores (ties: the lower index), -1 = none."""
    allowed = allowed.expand(scores.shape)
    masked = torch.where(allowed, scores, torch.full_like(scores, float("-inf")))
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices[..., :count]
    out = torch.where(torch.gather(allowed, -1, order), order, torch.full_like(order, -1))
    pad = count - out.shape[-1]
    return torch.cat([out, out.new_full((*out.shape[:-1], pad), -1)], dim=-1) if pad > 0 else out


def _low_rank(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """x + (x @ down) @ up per head (the choice's router, ``select_router_rank``), fp32."""
    low = torch.einsum("bhpd,hdr->bhpr", x.float(), down.float())
    return x.float() + torch.einsum("bhpr,hrd->bhpd", low, up.float())


def selection_mask(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, c: HaloSConfig, pool=None, router=None):
    """(k, v, mask [B, Hq, L, L + S] over the chosen tokens and the scored summaries) of the text queries:
    the summaries appended to k and v. The same rules as halo_lab's selection: candidates are the complete
    blocks that start before a query's window, scores (``_scores``) summed over a KV head's query heads,
    with a ``router`` (``select_router_rank``) from the routed queries and keys (``_low_rank``)."""
    G, W, b, m = c.num_globals, c.local_window, c.select_block_size, c.select_group_size
    B, Hq, L, d = q.shape
    Hkv, N = k.shape[1], L - G
    # fp32 summaries for the choice whatever the dtype (as halo_lab's), the input's dtype as keys
    w = _block_weights(v.float(), c, pool) if pool is not None else None
    sk32, sv32 = _summaries(k.float(), c, w), _summaries(v.float(), c, w)
    sk, sv = sk32.to(k.dtype), sv32.to(v.dtype)
    S, nb = sk.shape[2], N // b
    qg, rk, rsk = q[:, :, G:].float(), k, sk32
    if router is not None:  # the choice ranks routed queries against the routed keys' summaries and bounds
        qg = _low_rank(qg, router[0], router[1])
        rk = _low_rank(k.float(), router[2], router[3])
        rsk = _summaries(rk, c, w)
    qg = qg.reshape(B, Hkv, Hq // Hkv, N, d)
    scores = _scores(qg, rk, rsk, c) / d**0.5
    pos = torch.arange(N, device=q.device)  # candidates: the complete blocks that start before the window
    cand = torch.minimum(
        torch.div(pos - W + b, b, rounding_mode="floor"), torch.div(pos + 1, b, rounding_mode="floor")
    )
    cand = cand.clamp(min=0)
    cand = cand.view(1, 1, N, 1)
    blocks = torch.arange(nb, device=q.device)
    allowed = blocks < cand
    scored = torch.zeros(B, Hkv, N, S, dtype=torch.bool, device=q.device)
    if m:
        groups = _top(scores[..., nb:], torch.arange(S - nb, device=q.device) < cand // m, c.select_groups)
        in_chosen = ((blocks // m).view(1, 1, 1, nb, 1) == groups.unsqueeze(3)).any(-1)
        allowed = allowed & ((blocks >= (cand // m) * m) | in_chosen)
        scored[..., nb:] = torch.arange(S - nb, device=q.device) < cand // m
    scored[..., :nb] = allowed
    chosen = _top(scores[..., :nb], allowed, c.select_blocks)
    tok = chosen.unsqueeze(-1) * b + torch.arange(b, device=q.device)
    tok = torch.where(chosen.unsqueeze(-1) >= 0, tok + G, torch.full_like(tok, L)).flatten(-2)
    mask = torch.zeros(B, Hkv, N, L + 1, dtype=torch.bool, device=q.device)
    mask.scatter_(-1, tok, True)
    text = torch.cat([mask[..., :L], scored & c.select_summary_keys], dim=-1)
    wide = torch.cat([text.new_zeros(B, Hkv, G, L + S), text], dim=2)
    return torch.cat([k, sk], 2), torch.cat([v, sv], 2), wide.repeat_interleave(Hq // Hkv, dim=1)


def _selection_bias(mask, tokens, bias, token_bias, first: int, dtype) -> torch.Tensor:
    """The boolean mask [B, Hq, L, L + S] as an additive one (0 / -inf) in ``dtype``, with each KV head's
    summary bias ``bias`` [Hkv] added on the summaries' columns ``first``.. and its chosen-token bias
    ``token_bias`` [Hkv] on the chosen tokens ``tokens`` [B, Hq, L, first], for its query heads (None:
    none)."""
    Hq = mask.shape[1]
    add = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, float("-inf"))
    head, tail = add[..., :first], add[..., first:]
    if bias is not None:
        tail = tail + bias.to(dtype).repeat_interleave(Hq // bias.shape[0]).view(1, Hq, 1, 1)
    if token_bias is not None:
        head = head + tokens * token_bias.to(dtype).repeat_interleave(Hq // token_bias.shape[0]).view(
            1, Hq, 1, 1
        )
    return torch.cat([head, tail], dim=-1)


# ------------------------------------------------------------------------------------------- modules
def _rope(head_dim: int, length: int, base: float, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
    inv_freq = 1.0 / (base ** (torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim))
    freqs = torch.outer(torch.arange(length, dtype=torch.float32, device=device), inv_freq.to(device))
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos().to(dtype), emb.sin().to(dtype)


def _apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def _norm(c: HaloSConfig) -> nn.Module:
    if c.norm == "rmsnorm":
        return nn.RMSNorm(c.hidden_size, eps=c.norm_eps)
    return nn.LayerNorm(c.hidden_size, eps=c.norm_eps)


class HaloFeedForward(nn.Module):
    def __init__(self, c: HaloSConfig):
        super().__init__()
        inner = c.ffn_mult * c.hidden_size
        self.w1 = nn.Linear(c.hidden_size, inner, bias=False)
        self.w2 = nn.Linear(inner, c.hidden_size, bias=False)
        self.w3 = nn.Linear(c.hidden_size, inner, bias=False) if c.use_swiglu else None
        self.dropout = nn.Dropout(c.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.silu(self.w1(x)) * self.w3(x) if self.w3 is not None else F.gelu(self.w1(x))
        return self.dropout(self.w2(h))


class HaloCausalConv(nn.Module):
    def __init__(self, hidden_size: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.conv = nn.Conv1d(hidden_size, hidden_size, kernel, groups=hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xp = F.pad(x, (0, 0, self.kernel - 1, 0)).transpose(1, 2)
        w, b = self.conv.weight.to(x.dtype), self.conv.bias.to(x.dtype)
        return x + F.conv1d(xp, w, b, groups=x.shape[-1]).transpose(1, 2)


class HaloAttention(nn.Module):
    def __init__(self, c: HaloSConfig):
        super().__init__()
        self.c, d = c, c.hidden_size // c.num_heads
        self.q_proj = nn.Linear(c.hidden_size, c.num_heads * d, bias=False)
        self.k_proj = nn.Linear(c.hidden_size, c.num_kv_heads * d, bias=False)
        self.v_proj = nn.Linear(c.hidden_size, c.num_kv_heads * d, bias=False)
        self.o_proj = nn.Linear(c.num_heads * d, c.hidden_size, bias=False)
        self.dropout = nn.Dropout(c.dropout)
        learned = c.arch == "halo" and c.select_blocks and getattr(c, "select_pooling", "mean") == "learned"
        self.select_pool = nn.Parameter(torch.zeros(c.num_kv_heads, d)) if learned else None
        # the summary keys' learned logit bias per KV head (select_summary_bias; None: none)
        bias = getattr(c, "select_summary_bias", None) if c.select_blocks and c.select_summary_keys else None
        biased = c.arch == "halo" and bias is not None
        self.select_bias = nn.Parameter(torch.full((c.num_kv_heads,), float(bias))) if biased else None
        # the chosen tokens' learned logit bias per KV head (select_token_bias; None: none)
        tb = getattr(c, "select_token_bias", None) if c.arch == "halo" and c.select_blocks else None
        self.select_token_bias = (
            nn.Parameter(torch.full((c.num_kv_heads,), float(tb))) if tb is not None else None
        )
        # the choice's low-rank router (select_router_rank; 0: none), loaded from the checkpoint
        r = getattr(c, "select_router_rank", 0) if c.arch == "halo" and c.select_blocks else 0
        self.select_route_down = nn.Parameter(torch.zeros(c.num_heads, d, r)) if r else None
        self.select_route_up = nn.Parameter(torch.zeros(c.num_heads, r, d)) if r else None
        self.select_route_key_down = nn.Parameter(torch.zeros(c.num_kv_heads, d, r)) if r else None
        self.select_route_key_up = nn.Parameter(torch.zeros(c.num_kv_heads, r, d)) if r else None

    def forward(self, x, cos, sin, mask: torch.Tensor | None) -> torch.Tensor:
        B, T, _ = x.shape
        c, d = self.c, self.c.hidden_size // self.c.num_heads
        q = _apply_rope(self.q_proj(x).view(B, T, c.num_heads, d).transpose(1, 2), cos, sin)
        k = _apply_rope(self.k_proj(x).view(B, T, c.num_kv_heads, d).transpose(1, 2), cos, sin)
        v = self.v_proj(x).view(B, T, c.num_kv_heads, d).transpose(1, 2)
        gqa = c.num_heads != c.num_kv_heads
        if mask is None:  # the dense baseline
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=gqa)
        else:
            if c.select_blocks:  # the graph's mask, widened by the content-selected keys
                router = None
                if self.select_route_down is not None:
                    router = (self.select_route_down, self.select_route_up,
                              self.select_route_key_down, self.select_route_key_up)  # fmt: skip
                k, v, chosen = selection_mask(q, k, v, c, self.select_pool, router)
                L = mask.shape[1]
                tokens = chosen[..., :L] & ~mask  # the chosen tokens that are not graph keys
                chosen[..., :L] |= mask
                if self.select_bias is not None or self.select_token_bias is not None:  # additive
                    chosen = _selection_bias(
                        chosen, tokens, self.select_bias, self.select_token_bias, L, q.dtype
                    )
                mask = chosen
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=gqa)
        return self.dropout(self.o_proj(y.transpose(1, 2).reshape(B, T, -1)))


class HaloBlock(nn.Module):
    def __init__(self, c: HaloSConfig):
        super().__init__()
        self.ln_1 = _norm(c)
        self.conv = HaloCausalConv(c.hidden_size, c.short_conv) if c.short_conv else None
        self.attn = HaloAttention(c)
        self.ln_2 = _norm(c)
        self.ffn = HaloFeedForward(c)

    def forward(self, x, cos, sin, mask) -> torch.Tensor:
        h = self.ln_1(x)
        if self.conv is not None:
            h = self.conv(h)
        x = x + self.attn(h, cos, sin, mask)
        return x + self.ffn(self.ln_2(x))


class HaloSForCausalLM(PreTrainedModel, GenerationMixin):
    """HALO-S (``config.arch == "halo"``) or the dense baseline (``"dense"``) as a causal LM.

    ``labels`` follow transformers' convention (the inputs themselves: shifted here; -100 is ignored).
    ``attention_mask`` may only mark every position (no padding: the graph has no notion of it)."""

    config_class = HaloSConfig
    base_model_prefix = "halo"  # no such submodule: the weights sit at the top level, as halo_lab saves them
    main_input_name = "input_ids"
    _no_split_modules = ["HaloBlock"]
    # transformers 5 maps tied names to their source; 4.x lists them (tied only if tie_word_embeddings)
    _tied_weights_keys = (
        {"lm_head.weight": "token_emb.weight"}
        if int(transformers.__version__.split(".")[0]) >= 5
        else ["lm_head.weight"]
    )

    def __init__(self, config: HaloSConfig):
        super().__init__(config)
        c = config
        self.num_globals = c.num_globals if c.arch == "halo" else 0
        self.token_emb = nn.Embedding(c.vocab_size, c.hidden_size)
        if self.num_globals:
            self.global_memory = nn.Parameter(torch.zeros(self.num_globals, c.hidden_size))
        self.layers = nn.ModuleList(HaloBlock(c) for _ in range(c.num_layers))
        self.ln_f = _norm(c)
        self.lm_head = nn.Linear(c.hidden_size, c.vocab_size, bias=False)
        self._masks: dict[tuple, torch.Tensor] = {}
        self.post_init()

    def _init_weights(self, module: nn.Module) -> None:
        std = self.config.init_std
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, std=std)
        elif module is self and hasattr(module, "global_memory"):
            nn.init.normal_(module.global_memory, std=std)

    def get_input_embeddings(self) -> nn.Module:
        return self.token_emb

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.token_emb = value

    def get_output_embeddings(self) -> nn.Module:
        return self.lm_head

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.lm_head = value

    def _mask(self, layer: int, text_len: int, device) -> torch.Tensor:
        key = (layer, text_len, str(device))
        if key not in self._masks:
            if len(self._masks) > 4 * len(self.layers):  # generation grows the length by one per token
                self._masks.clear()
            self._masks[key] = graph_mask(self.config, layer, text_len, device)
        return self._masks[key]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        if input_ids is None:
            raise ValueError("HaloSForCausalLM.forward needs input_ids (inputs_embeds are not supported)")
        if attention_mask is not None and not bool(attention_mask.bool().all()):
            raise ValueError(
                "HaloSForCausalLM: attention_mask with padding is not supported (the sparse graph has no "
                "padding); pass sequences of one length"
            )
        B, T = input_ids.shape
        x = self.token_emb(input_ids)
        if self.num_globals:
            x = torch.cat([self.global_memory.to(x.dtype).expand(B, -1, -1), x], dim=1)
        c = self.config
        cos, sin = _rope(c.hidden_size // c.num_heads, x.shape[1], c.rope_base, x.device, x.dtype)
        for i, layer in enumerate(self.layers):
            mask = self._mask(i, T, x.device) if c.arch == "halo" else None
            x = layer(x, cos, sin, mask)
        logits = self.lm_head(self.ln_f(x)[:, self.num_globals :])
        loss = None
        if labels is not None:
            shift = logits[:, :-1].float().flatten(0, 1)
            loss = F.cross_entropy(shift, labels[:, 1:].flatten(), ignore_index=-100)
        return CausalLMOutputWithPast(loss=loss, logits=logits)

    def prepare_inputs_for_generation(self, input_ids: torch.LongTensor, **kwargs) -> dict:
        # no KV cache: every step runs the whole sequence (exact; see the module docstring)
        return {"input_ids": input_ids}

    def _supports_default_dynamic_cache(self) -> bool:  # transformers' cache objects are never used
        return False


__all__ = ["HaloSConfig", "HaloSForCausalLM", "graph_mask"]
