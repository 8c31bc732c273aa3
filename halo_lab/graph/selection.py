"""Content-selected blocks: the part of the HALO graph chosen by the input (``HaloConfig.select_blocks`` > 0).

The fixed graph (``edges``) routes by position only, so beyond its window a query cannot reach the one
token it needs. This part lets it choose, as NSA, MoBA and Zoology's NSA mixer do. The text is cut into
blocks of b tokens (``select_block_size``); block j holds text tokens j*b .. j*b + b - 1. For the text
query at position i:

* **candidates**: the c_i = max(0, min(ceil((i - W + 1) / b), (i + 1) // b)) complete blocks that start
  before its window (causal by construction: a block still filling is never read). The last of them may
  overlap the window: its keys in the window count once (the graph is a set), and its keys before the
  window are reachable (before 2026-12-05 only blocks that ended before the window were candidates, and
  the up to b - 1 keys just before the window that shared a block with it were in no part of the graph);
* **summaries**: a block's summary key and value are the means of its keys (after RoPE) and values, per
  KV head; with groups (``select_group_size`` m > 0) every m consecutive blocks also form a group whose
  summary is the mean of theirs;
* **scores** (``select_score``): ``mean``, the summary keys against the query; ``bound``, Quest's upper
  bound of q . k over the block's keys from their elementwise minimum and maximum (``key_bounds``); either
  summed over the query heads of its KV head (they share the choice, so a fused kernel loads each chosen
  block once per group of heads); ties go to the lower index (a stable sort), so the choice is
  deterministic;
* **choice**: without groups, the n best of the c_i candidate blocks (``select_blocks``); with groups,
  the n2 best of the c_i // m complete candidate groups (``select_groups``), then the n best blocks
  among those groups' blocks and the c_i % m candidates not yet in a complete group;
* **keys**: the summaries the query scored (``select_summary_keys``: what trains the scores, since top-n
  has no gradient) and every token of its n chosen blocks, in the same softmax as its graph keys. A chosen
  token that is already one of its graph keys (a dilated or random key) counts once: the graph is a set.
  With ``select_summary_bias`` each summary key's score gets its layer's learned bias for its KV head (the
  backends add it; the choice here does not: a constant per head ranks the summaries the same).

So a text query reads at most  G + W + D + R  +  S_i  +  n*b  keys, with S_i = c_i without groups and
c_i // m + n2*m + (m - 1) with them (``keys_per_query``). A query with fewer candidates takes what exists.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from halo_lab.config import HaloConfig

# scores held at once by the choice (fp32 elements: 64 MB), whatever the length
CHOICE_CHUNK_ELEMENTS = 1 << 24


def candidate_blocks(config: HaloConfig, positions: torch.Tensor) -> torch.Tensor:
    """[P] c_i: how many blocks (0 .. c_i - 1) are candidates of the text query at each position."""
    W, b = config.local_window, config.select_block_size
    p = positions.long()
    before_window = torch.div(p - W + b, b, rounding_mode="floor")  # blocks starting before p - W + 1
    return torch.minimum(before_window, torch.div(p + 1, b, rounding_mode="floor")).clamp(min=0)


def summaries_per_query(config: HaloConfig, positions: torch.Tensor) -> torch.Tensor:
    """[P] how many summaries the text query at each position scores (its candidate groups and the blocks
    it ranks): the summary keys it has with ``select_summary_keys``, and the cost of its choice."""
    if not config.selects:
        return torch.zeros_like(positions, dtype=torch.long)
    c, m = candidate_blocks(config, positions), config.select_group_size
    if not m:
        return c
    groups = c // m
    return groups + groups.clamp(max=config.select_groups) * m + c % m


def keys_per_query(config: HaloConfig, positions: torch.Tensor) -> torch.Tensor:
    """[P] the most content-selected keys (summaries + chosen tokens) a text query at each position reads:
    exact when no chosen token is also a window, dilated or random key of the query (then one fewer per
    such; the window's share is the part of the block that overlaps it, at most b - 1 keys)."""
    if not config.selects:
        return torch.zeros_like(positions, dtype=torch.long)
    c, m = candidate_blocks(config, positions), config.select_group_size
    ranked = c if not m else (c // m).clamp(max=config.select_groups) * m + c % m
    chosen = ranked.clamp(max=config.select_blocks) * config.select_block_size
    summaries = summaries_per_query(config, positions)
    return chosen + (summaries if config.select_summary_keys else 0)


def block_weights(v: torch.Tensor, config: HaloConfig, num_globals: int, pool: torch.Tensor) -> torch.Tensor:
    """[B, H, nb, b] the learned pooling's weights of every complete block (``select_pooling=learned``):
    softmax over the block of v_t . u / sqrt(d), with ``pool`` u [H, d]."""
    B, H, L, d = v.shape
    b = config.select_block_size
    nb = (L - num_globals) // b
    blocks = v[:, :, num_globals : num_globals + nb * b].reshape(B, H, nb, b, d)
    logits = torch.einsum("bhnkd,hd->bhnk", blocks.float(), pool.float()) / math.sqrt(d)
    return torch.softmax(logits, dim=-1).to(v.dtype)


def summaries(
    x: torch.Tensor, config: HaloConfig, num_globals: int, weights: torch.Tensor | None = None
) -> torch.Tensor:
    """[B, H, S, d] the block summaries of ``x`` ([B, H, G + N, d], keys or values): the means of the
    complete blocks of the text (weighted by ``weights`` [B, H, nb, b] with the learned pooling), then
    (with groups) the means of the complete groups of blocks."""
    B, H, L, d = x.shape
    b, m = config.select_block_size, config.select_group_size
    nb = (L - num_globals) // b
    blocks = x[:, :, num_globals : num_globals + nb * b].reshape(B, H, nb, b, d)
    fine = blocks.mean(3) if weights is None else torch.einsum("bhnkd,bhnk->bhnd", blocks, weights)
    if not m:
        return fine
    ng = nb // m
    return torch.cat([fine, fine[:, :, : ng * m].reshape(B, H, ng, m, d).mean(3)], dim=2)


def key_bounds(k: torch.Tensor, config: HaloConfig, num_globals: int) -> tuple[torch.Tensor, torch.Tensor]:
    """([B, H, S, d], [B, H, S, d]) the elementwise minimum and maximum of the keys ``k`` ([B, H, G + N, d])
    of every complete block of the text, then (with groups) of every complete group: the ``bound`` score's
    summaries, rows as ``summaries``'."""
    B, H, L, d = k.shape
    b, m = config.select_block_size, config.select_group_size
    nb = (L - num_globals) // b
    blocks = k[:, :, num_globals : num_globals + nb * b].reshape(B, H, nb, b, d)
    lo, hi = blocks.amin(3), blocks.amax(3)
    if not m:
        return lo, hi
    ng = nb // m
    return (
        torch.cat([lo, lo[:, :, : ng * m].reshape(B, H, ng, m, d).amin(3)], dim=2),
        torch.cat([hi, hi[:, :, : ng * m].reshape(B, H, ng, m, d).amax(3)], dim=2),
    )


def score_factors(
    config: HaloConfig, qg: torch.Tensor, summary_k: torch.Tensor, bounds: tuple | None = None
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """[(query factor [B, Hkv, P, d], summary factor [B, Hkv, S, d])]: the scores of ``summary_scores`` are
    the sum of their products, for the queries ``qg`` [B, Hkv, g, P, d] (fp32), each query factor summed
    over the g heads once (select() reuses it for every chunk of queries): ``mean``, (q, the summary keys);
    ``bound`` (``bounds`` = ``key_bounds``), (q+, the keys' maxima) and (q-, their minima)."""
    if config.select_score != "bound":
        return [(qg.sum(2), summary_k)]
    lo, hi = bounds
    return [(qg.clamp(min=0).sum(2), hi), (qg.clamp(max=0).sum(2), lo)]


def factor_scores(factors: list, part: slice = slice(None)) -> torch.Tensor:
    """[B, Hkv, p, S] the scores (before 1/sqrt(d)) of the queries ``part`` from their ``score_factors``."""
    (qf, sf), *rest = factors
    scores = torch.einsum("bhpd,bhsd->bhps", qf[:, :, part], sf)
    for qf, sf in rest:
        scores.add_(torch.einsum("bhpd,bhsd->bhps", qf[:, :, part], sf))
    return scores


def summary_scores(
    config: HaloConfig, qg: torch.Tensor, summary_k: torch.Tensor, bounds: tuple | None = None
) -> torch.Tensor:
    """[B, Hkv, P, S] the scores (before 1/sqrt(d)) of every summary for the queries ``qg`` [B, Hkv, g, P,
    d] (the g query heads of each KV head), all fp32: ``mean``, q . summary key summed over the g heads;
    ``bound`` (``bounds`` = ``key_bounds``), sum over heads and d of max(q_d lo_d, q_d hi_d), which is
    q+ . hi + q- . lo: two products, no [P, S, d] tensor."""
    return factor_scores(score_factors(config, qg, summary_k, bounds))


def num_summaries(config: HaloConfig, text_len: int) -> tuple[int, int]:
    """(blocks, groups) of summaries over ``text_len`` tokens: rows 0..blocks-1 of ``summaries`` are the
    blocks, the next ``groups`` rows the groups."""
    nb = text_len // config.select_block_size
    return nb, (nb // config.select_group_size if config.select_group_size else 0)


@dataclass
class Selection:
    """The content-selected part of the graph for P text queries, per batch row and KV head.

    ``candidates`` [P]: c_i. ``groups`` [B, Hkv, P, n2] the chosen groups (-1 = none; empty without
    groups). ``blocks`` [B, Hkv, P, n] the chosen blocks (-1 = none). ``summary_k`` / ``summary_v``
    [B, Hkv, S, d]: ``summaries`` of the keys and values (blocks, then groups)."""

    config: HaloConfig
    positions: torch.Tensor
    candidates: torch.Tensor
    groups: torch.Tensor
    blocks: torch.Tensor
    summary_k: torch.Tensor
    summary_v: torch.Tensor
    num_blocks: int

    def summary_mask(self) -> torch.Tensor:
        """[B, Hkv, P, S] bool: the summaries each query has as keys (all False when
        ``select_summary_keys`` is off)."""
        B, H, P = self.blocks.shape[:3]
        S = self.summary_k.shape[2]
        mask = torch.zeros(B, H, P, S, dtype=torch.bool, device=self.blocks.device)
        if self.config.select_summary_keys:
            mask |= scored_blocks(self, S)
        return mask

    def token_index(self, graph_keys: torch.Tensor | None = None) -> torch.Tensor:
        """[B, Hkv, P, n*b] text positions of the chosen blocks' tokens, -1 for none and for a token that is
        already one of the query's ``graph_keys`` ([P, K] text positions, -1 = none)."""
        b = self.config.select_block_size
        tok = self.blocks.unsqueeze(-1) * b + torch.arange(b, device=self.blocks.device)
        tok = torch.where(self.blocks.unsqueeze(-1) >= 0, tok, torch.full_like(tok, -1)).flatten(-2)
        if graph_keys is not None and graph_keys.numel():
            g = graph_keys[None, None, :, None, :]
            dup = ((tok.unsqueeze(-1) == g) & (g >= 0)).any(-1)
            tok = torch.where(dup, torch.full_like(tok, -1), tok)
        return tok


def scored_blocks(sel: Selection, S: int) -> torch.Tensor:
    """[B, Hkv, P, S] bool: the summaries a query scored (its candidate groups, and the blocks it ranked)."""
    cfg, nb = sel.config, sel.num_blocks
    B, H, P = sel.blocks.shape[:3]
    device = sel.blocks.device
    idx = torch.arange(S, device=device)
    c = sel.candidates.view(1, 1, P, 1)
    m = cfg.select_group_size
    fine = (idx < nb) & (idx < c)
    if not m:
        return fine.expand(B, H, P, S)
    # block s is in the chosen group g when g*m <= s < g*m + m (g = -1: none, holds no block). Compared, not
    # s // m == g: Inductor's CPU code (torch 2.13) leaves the columns past the last multiple of 16 of an
    # index floor-divided by 16 unwritten, so the compiled decode step read garbage there (tests/test_generate)
    first = sel.groups.unsqueeze(3) * m  # [B, Hkv, P, 1, n2]
    s = idx.view(1, 1, 1, S, 1)
    chosen = ((s >= first) & (s < first + m)).any(-1)
    loose = idx >= (c // m) * m
    groups = (idx >= nb) & (idx - nb < c // m)
    return fine & (loose | chosen) | groups


def _top(scores: torch.Tensor, allowed: torch.Tensor, count: int) -> torch.Tensor:
    """[..., count] indices of the ``count`` highest allowed scores (ties: the lower index), -1 = none;
    ``allowed`` broadcasts to ``scores``."""
    if count == 0 or scores.shape[-1] == 0:
        return scores.new_full((*scores.shape[:-1], count), -1, dtype=torch.long)
    masked = torch.where(allowed, scores, float("-inf"))  # a scalar: no [.., S] tensor of -inf to fill
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices[..., :count]
    out = torch.where(torch.gather(allowed.expand(scores.shape), -1, order), order, -1)
    return _pad_to(out, count)


def _pad_to(t: torch.Tensor, count: int) -> torch.Tensor:
    """``t`` [..., w] with -1 columns up to ``count`` (fewer blocks than n in the whole text)."""
    if t.shape[-1] >= count:
        return t
    return torch.cat([t, t.new_full((*t.shape[:-1], count - t.shape[-1]), -1)], dim=-1)


@dataclass
class _Ranking:
    """What ``choose`` needs of the queries' candidates, built once per call and sliced per chunk of queries
    (views: no op per chunk). Without groups (or with no complete group in the text, when every candidate is
    loose): ``ids`` [nb] block indices, the blocks ``ids < c`` ranked. With groups: ``ids`` [ng] group
    indices, the groups ``ids < c // m`` ranked; ``table`` [ng + 1, m] the blocks of each group, its last row
    (what group -1 reads) m times ``nb``, which sorts after every block; ``loose`` [1, 1, P, m - 1] the
    candidates past the complete groups, ``nb`` for none."""

    ids: torch.Tensor
    limit: torch.Tensor  # [1, 1, P, 1] c, or c // m with groups
    nb: int
    table: torch.Tensor | None = None
    loose: torch.Tensor | None = None

    @staticmethod
    def of(config: HaloConfig, candidates: torch.Tensor, nb: int, ng: int) -> _Ranking:
        m, device = config.select_group_size, candidates.device
        c = candidates.view(1, 1, -1, 1)
        if not m or not ng:
            return _Ranking(torch.arange(nb, device=device), c, nb)
        arange_m = torch.arange(m, device=device)
        table = torch.arange(ng + 1, device=device).unsqueeze(1) * m + arange_m
        table[ng] = nb
        complete = c // m
        loose = complete * m + arange_m[: m - 1]  # from the first block past the complete groups
        loose = torch.where(loose < c, loose, nb)
        return _Ranking(torch.arange(ng, device=device), complete, nb, table, loose)

    def rows(self, part: slice) -> _Ranking:
        loose = None if self.loose is None else self.loose[:, :, part]
        return _Ranking(self.ids, self.limit[:, :, part], self.nb, self.table, loose)


@torch.no_grad()
def choose(config: HaloConfig, scores: torch.Tensor, candidates: torch.Tensor, nb: int):
    """(groups, blocks) from the scores [B, Hkv, P, S] of every summary (``nb`` blocks, then groups) for
    queries with ``candidates`` [P] candidate blocks."""
    return _choose(config, scores, _Ranking.of(config, candidates, nb, scores.shape[-1] - nb))


def _choose(config: HaloConfig, scores: torch.Tensor, rank: _Ranking):
    nb, n = rank.nb, config.select_blocks
    if rank.table is None:  # no groups, or no complete group in the text: every candidate block is ranked
        groups = scores.new_full(
            (*scores.shape[:3], config.select_groups if config.select_group_size else 0), -1, dtype=torch.long
        )
        return groups, _top(scores[..., :nb], rank.ids < rank.limit, n)
    groups = _top(scores[..., nb:], rank.ids < rank.limit, config.select_groups)
    # the blocks ranked: the chosen groups' and those past the complete groups (< m), sorted ascending (so
    # that the stable sort gives ties to the lower block), ``nb`` (none) last, instead of masking all nb
    grouped = rank.table[groups].flatten(-2)  # group -1 reads the table's last row: nb
    ranked = torch.cat([grouped, rank.loose.expand(*grouped.shape[:3], -1)], dim=-1).sort(-1).values
    ok = ranked < nb
    masked = torch.where(ok, torch.gather(scores, -1, ranked), float("-inf"))  # column nb: a group's score
    order = torch.sort(masked, dim=-1, descending=True, stable=True).indices[..., :n]
    return groups, _pad_to(torch.gather(torch.where(ok, ranked, -1), -1, order), n)


@torch.no_grad()
def _choice(
    config: HaloConfig, q: torch.Tensor, k: torch.Tensor, summary_k: torch.Tensor, candidates, nb: int
):
    """(groups, blocks) of the queries ``q`` [B, Hq, P, d]: the scores of every summary, in chunks of queries
    (the scores [B, Hkv, chunk, S] grow as N / b per query, so the whole [P, S] would grow as N^2 / b:
    13.6 GB for one 64K row before the chunks, experiments/bench), then ``choose``."""
    B, Hq, P, d = q.shape
    Hkv, S = k.shape[1], summary_k.shape[2]
    bounds = key_bounds(k, config, config.num_globals) if config.select_score == "bound" else None
    factors = score_factors(config, q.view(B, Hkv, Hq // Hkv, P, d).float(), summary_k, bounds)
    rank = _Ranking.of(config, candidates, nb, S - nb)
    chunk = max(1, CHOICE_CHUNK_ELEMENTS // max(1, B * Hkv * S))
    chosen = []
    for start in range(0, P, chunk):
        part = slice(start, start + chunk)
        scores = factor_scores(factors, part).div_(math.sqrt(d))
        chosen.append(_choose(config, scores, rank.rows(part)))
    if len(chosen) == 1:
        return chosen[0]
    return torch.cat([g for g, _ in chosen], dim=2), torch.cat([b for _, b in chosen], dim=2)


def _low_rank(x: torch.Tensor, down: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    """x + (x @ down) @ up per head, fp32; x [B, H, P, d'] with d' >= d = down's rows (the kernels' zero-padded
    head_dim): the columns past d stay as they are (zero)."""
    d = down.shape[1]
    low = torch.einsum("bhpd,hdr->bhpr", x[..., :d].float(), down.float())
    delta = torch.einsum("bhpr,hrd->bhpd", low, up.float())
    return x.float() + torch.nn.functional.pad(delta, (0, x.shape[-1] - d))


def route_queries(q: torch.Tensor, router: tuple | None) -> torch.Tensor:
    """The queries the choice ranks with (``select_router_rank``): q + (q @ down) @ up per query head, with
    ``router`` = (down [Hq, d, r], up [Hq, r, d], key down [Hkv, d, r], key up [Hkv, r, d]) the layer's
    low-rank router, in fp32; ``q`` [B, Hq, P, d] itself (fp32) without a router."""
    return q.float() if router is None else _low_rank(q, router[0], router[1])


def route_keys(k: torch.Tensor, router: tuple | None) -> torch.Tensor:
    """The keys whose block summaries and bounds the choice ranks (``route_queries``' keys): k + (k @ key
    down) @ key up per KV head, fp32; ``k`` itself (fp32) without a router. Together a learned metric and
    basis for the ranking alone (the bound's min and max are taken in the routed basis): attention keeps q
    and k, and both ups start at zero, so a new router ranks as q and k do."""
    return k.float() if router is None else _low_rank(k, router[2], router[3])


def select(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    config: HaloConfig,
    positions: torch.Tensor,
    pool: torch.Tensor | None = None,
    choice=None,
    router: tuple | None = None,
) -> Selection:
    """The selection of the text queries ``q`` ([B, Hq, P, d], at text ``positions`` [P]) over the keys and
    values ``k``, ``v`` ([B, Hkv, G + N, d]: the globals then the text so far, RoPE applied); ``pool``: the
    learned pooling's u [Hkv, d] (``select_pooling=learned``), None for the mean. ``choice``: a function
    with ``_choice``'s arguments and result (the fused one of the kernels' layer), None for ``_choice``.
    ``router``: the layer's four factors (``route_queries``): the choice ranks the routed queries against
    the routed keys' summaries and bounds."""
    G = config.num_globals
    # The summaries in fp32 whatever the input's dtype, so that the choice (discrete: a rounding can swap
    # two close blocks) is the same in bf16 training, fp32 on a CPU, the oracle and cached decoding; they
    # join the keys in the input's dtype.
    # The keys converted once (the bound's extrema read them without a gradient); the pooling's weights
    # convert the values apart: one shared conversion would sum their two gradients before the cast back
    # to bf16, not after (a different rounding of dv).
    kf, vf = k.float(), v.float()
    w = block_weights(v.float(), config, G, pool) if pool is not None else None
    sk32, sv32 = summaries(kf, config, G, w), summaries(vf, config, G, w)
    sk, sv = sk32.to(k.dtype), sv32.to(v.dtype)
    nb, _ = num_summaries(config, k.shape[2] - G)
    candidates = candidate_blocks(config, positions)
    # top-n has no gradient: the summaries learn as keys of the softmax
    qc, kc, skc = q.detach(), kf.detach(), sk32.detach()
    if router is not None:
        r = tuple(t.detach() for t in router)
        qc, kc = route_queries(qc, r), route_keys(kc, r)
        skc = summaries(kc, config, G, None if w is None else w.detach())
    groups, blocks = (choice or _choice)(config, qc, kc, skc, candidates, nb)
    return Selection(config, positions, candidates, groups, blocks, sk, sv, nb)


def routing_queries(config: HaloConfig, text_len: int, count: int, step: int) -> torch.Tensor:
    """[<= count] text positions, evenly spaced (turned by ``step`` so that every position takes its turn),
    among the queries with two candidate blocks or more: the ones ``routing_loss`` reads. Plain ints (no
    data-dependent op): c_i >= 2 from i = max(W + b, 2b - 1) on (``candidate_blocks``)."""
    b = config.select_block_size
    first = max(config.local_window + b, 2 * b - 1)
    e = max(0, text_len - first)
    n = min(count, e)
    return torch.tensor([first + (i * e // n + step) % e for i in range(n)], dtype=torch.long)


def routing_loss(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, config: HaloConfig, count: int, step: int = 0,
    pool: torch.Tensor | None = None, router: tuple | None = None,
) -> torch.Tensor | None:  # fmt: skip
    """The routing's training signal, as DSA trains its indexer: top-n passes no gradient, so the scores
    that rank the blocks (and, with groups, the groups) learn here to match where attention over all the
    candidate tokens would put its mass. For ``count`` text queries (``routing_queries``), per KV head: the
    target is the softmax of q . k / sqrt(d) over the tokens of the query's candidate blocks, summed per
    block (per complete group) and averaged over the KV head's query heads, without a gradient; the loss
    is KL(target || softmax of the ranking scores / sqrt(d) over the same candidates), the mean over rows,
    KV heads and queries (blocks and groups each). ``q`` [B, Hq, G + N, d], ``k``, ``v`` [B, Hkv, G + N, d]
    after RoPE. None when no query has two candidates. In fp32 under autocast too (bf16-mixed training).
    With a ``router`` the scores are its routed queries' (``route_queries``) against the summaries and
    bounds of its routed keys (``route_keys``), all from detached inputs: the loss trains the router alone
    and leaves attention's q, k and pooling to the language-model loss (DSA's indexer)."""
    with torch.autocast(q.device.type, enabled=False):
        if router is not None:
            q, k, v, pool = q.detach(), k.detach(), v.detach(), None if pool is None else pool.detach()
        return _routing_loss(q, k, v, config, count, step, pool, router)


def _routing_loss(q, k, v, config: HaloConfig, count: int, step: int, pool, router) -> torch.Tensor | None:
    G, b, m = config.num_globals, config.select_block_size, config.select_group_size
    B, Hq, L, d = q.shape
    Hkv, N = k.shape[1], L - G
    nb, ng = num_summaries(config, N)
    pos = routing_queries(config, N, count, step)
    if pos.numel() == 0:
        return None
    c_host = candidate_blocks(config, pos)  # on the host: which queries rank groups, without a sync
    c = c_host.to(q.device).view(1, 1, -1, 1)
    qs = q[:, :, G + pos.to(q.device)].float().view(B, Hkv, Hq // Hkv, -1, d)
    kf = k.float()
    with torch.no_grad():  # the target: attention's mass over the candidates' tokens, per block
        tokens = kf[:, :, G : G + nb * b]
        logits = torch.einsum("bhgpd,bhtd->bhgpt", qs, tokens) / math.sqrt(d)
        block_of = torch.arange(nb * b, device=q.device) // b
        logits = logits.masked_fill(block_of >= c.unsqueeze(2), float("-inf"))
        mass = torch.softmax(logits, -1).view(*logits.shape[:-1], nb, b).sum(-1).mean(2)  # [B, Hkv, P, nb]
    w = block_weights(v.float(), config, G, pool) if pool is not None else None
    if router is not None:  # the routed queries ([B, Hq, P, d] -> [B, Hkv, g, P, d]) and keys
        qs = route_queries(q[:, :, G + pos.to(q.device)], router).view(B, Hkv, Hq // Hkv, -1, d)
        kf = route_keys(kf, router)
    bounds = key_bounds(kf, config, G) if config.select_score == "bound" else None
    scores = summary_scores(config, qs, summaries(kf, config, G, w), bounds) / math.sqrt(d)
    idx = torch.arange(nb, device=q.device)
    loss = _kl(mass, scores[..., :nb], idx < c)
    if m and ng:  # the groups' ranking, for the queries with two complete candidate groups or more
        keep = torch.nonzero(c_host // m >= 2).flatten().to(q.device)
        if keep.numel():
            gm = mass[..., : ng * m].reshape(B, Hkv, -1, ng, m).sum(-1)[:, :, keep]
            ok = (torch.arange(ng, device=q.device) < c // m)[:, :, keep].expand_as(gm)
            target = gm.masked_fill(~ok, 0)
            target = target / target.sum(-1, keepdim=True).clamp(min=1e-30)
            loss = loss + _kl(target, scores[:, :, keep, nb : nb + ng], ok)
    return loss


def _kl(target: torch.Tensor, scores: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Mean over rows of KL(target || softmax(scores)) over the ``allowed`` columns (target 0 elsewhere)."""
    log_q = torch.log_softmax(scores.masked_fill(~allowed, float("-inf")), -1)
    t = target.masked_fill(~allowed, 0)
    terms = torch.where(t > 0, t * (torch.log(t.clamp(min=1e-30)) - log_q), torch.zeros_like(t))
    return terms.sum(-1).mean()
