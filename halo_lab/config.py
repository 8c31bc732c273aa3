"""HaloConfig: one flat, documented, self-validating dataclass for HALO-S and its dense twin.

Field names and defaults follow the public reference (pyhalos 2.2.1) so its configs load unchanged;
the fields after ``use_swiglu`` are halo_lab's additions.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, NoReturn

DILATION_RULES = ("window_multiple", "absolute")
RANDOM_EDGE_MODES = ("block", "token")
ATTENTION_BACKENDS = ("auto", "reference", "masked", "triton", "flex", "hybrid", "dense")
NORMS = ("layernorm", "rmsnorm")
SELECT_POOLINGS = ("mean", "learned")
SELECT_SCORES = ("mean", "bound")
# backends whose kernels encode the fixed graph only: with select_blocks > 0 they would drop the selection
SELECTION_UNSUPPORTED = ("flex", "hybrid")

# HaloConfig.validate's tables, checked in this order.
_POSITIVE_INT_FIELDS = (
    "vocab_size",
    "hidden_size",
    "num_layers",
    "num_heads",
    "num_kv_heads",
    "max_seq_len",
    "local_window",
    "graph_block_size",
    "ffn_mult",
    "select_block_size",
    "select_groups",
)
_NON_NEGATIVE_INT_FIELDS = (
    "num_globals", "num_random", "select_blocks", "select_group_size", "select_router_rank",
)  # fmt: skip
# (fields, least value, message): integer fields (bools refused) and the least value each may take
_INTEGER_RULES: tuple[tuple[tuple[str, ...], int, str], ...] = (
    (_POSITIVE_INT_FIELDS, 1, "must be a positive integer"),
    (_NON_NEGATIVE_INT_FIELDS, 0, "must be a non-negative integer"),
)
# (field, its choices): message "must be one of <choices>" (select_pooling is checked with the selection)
_CHOICES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("dilation_rule", DILATION_RULES),
    ("random_edges", RANDOM_EDGE_MODES),
    ("attention_backend", ATTENTION_BACKENDS),
    ("norm", NORMS),
)
# (field, bound): the value must be above the bound, message "must be > <bound>"
_LOWER_BOUNDS: tuple[tuple[str, int], ...] = (("norm_eps", 0), ("rope_base", 1), ("init_std", 0))


def _is_int(value: Any) -> bool:
    """An int proper: bool is a subclass of int, but True is no size."""
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass
class HaloConfig:
    # --- the reference's fields and defaults ---
    vocab_size: int = 256
    """Token vocabulary size (256 for the byte-level tokenizer)."""
    hidden_size: int = 512
    """Model width."""
    num_layers: int = 6
    """Number of transformer blocks."""
    num_heads: int = 8
    """Query heads per attention layer."""
    num_kv_heads: int = 2
    """Key/value heads (grouped-query attention); must divide num_heads."""
    num_globals: int = 2
    """G learned global tokens prepended to every sequence; every token attends to all of them."""
    local_window: int = 64
    """W: each token attends to the W most recent tokens, itself included (keys i-W+1 .. i)."""
    dilated_offsets: list[int] = field(default_factory=lambda: [1, 2, 4, 8])
    """Dilated edges, one per offset; their distance follows ``dilation_rule``."""
    num_random: int = 2
    """R random edges per token into the past outside the window."""
    dropout: float = 0.1
    """Dropout on attention output and FFN output, in [0, 1)."""
    max_seq_len: int = 4096
    """Longest text sequence (global tokens not counted)."""
    use_swiglu: bool = True
    """SwiGLU feed-forward (w1, w3 gate, w2); False gives the reference 1.x GELU FFN (w1, w2)."""

    # --- halo_lab additions ---
    dilation_rule: str = "window_multiple"
    """How offsets become distances. ``window_multiple``: distance = offset * local_window, so the
    default offsets (1, 2, 4, 8) with W=64 reach 64, 128, 256, 512 tokens back: all outside the window
    and block-aligned. ``absolute``: distance = offset (the reference's reading); distances inside the
    window duplicate window edges and are dropped from the graph."""
    random_edges: str = "block"
    """``block``: the R random keys are shared by each block of ``graph_block_size`` queries (BigBird
    style: cheap for block-sparse kernels). ``token``: every token draws its own R keys."""
    graph_block_size: int = 128
    """Query block for block-level random edges and the fast backend's block mask."""
    graph_seed: int = 0
    """Seed of the random edges; they are a pure function of (seed, layer, step, position)."""
    attention_backend: str = "auto"
    """``auto`` (triton on CUDA; masked, then reference beyond 4096 positions, elsewhere), ``reference``
    (the gather oracle), ``masked`` (SDPA with the graph as an L x L boolean mask), ``triton`` (the fused
    kernel pair: the whole graph in one online softmax, halo_lab/kernels/halo_attention), ``flex`` (one
    block-sparse FlexAttention kernel over the whole graph), ``hybrid`` (window kernel + gathered
    long-range edges, merged by their log-sum-exp); ``dense`` is the baseline's."""
    ffn_mult: int = 4
    """FFN inner width = ffn_mult * hidden_size (the reference uses 4 for both FFN kinds)."""
    norm: str = "layernorm"
    """``layernorm`` (the reference's) or ``rmsnorm``."""
    norm_eps: float = 1e-5
    rope_base: float = 10000.0
    """RoPE base frequency."""
    tie_embeddings: bool = False
    """Share the token embedding with the LM head."""
    init_std: float = 0.02
    """Std of the normal init of linear and embedding weights."""
    short_conv: int = 0
    """Kernel size of a short causal depthwise convolution over time applied to the attention input of
    every block (Zoology/H3 style; 3-4 is typical), both architectures; 0 = off (the default)."""
    allow_full_window: bool = False
    """Allow ``local_window >= max_seq_len``: the window then covers the whole sequence, every token sees
    every earlier one and HALO-S is dense attention with extra globals. An error unless this is set
    (a window sized past the sequence is almost always a mistake that would go unnoticed)."""

    # --- content-selected blocks (halo_lab/graph/selection.py); select_blocks=0 keeps the graph above ---
    select_blocks: int = 0
    """n: blocks of the past that each query reads in full, chosen by content: the n candidate blocks whose
    summary keys score highest against the query (summed over the query heads of a KV head, which share
    the choice). 0 = off (the default: plain HALO-S, exactly as before)."""
    select_block_size: int = 16
    """b: the text is cut into blocks of b tokens. A block is a candidate for a query once it is complete
    and starts before the query's window. Its summary key and value are the means of its keys (after RoPE)
    and values, per KV head."""
    select_summary_keys: bool = True
    """The summaries of a query's candidate blocks are keys in its softmax too (this is what trains the
    scores: top-n itself has no gradient). False: they only rank the blocks (an ablation)."""
    select_group_size: int = 16
    """m: summaries of summaries, to bound the scored set at long context. Every m consecutive blocks form a
    group whose summary is the mean of theirs; a query scores the summaries of its complete candidate
    groups, keeps the ``select_groups`` best, and scores the blocks of those groups plus the candidate
    blocks not yet in a complete group. 0 = no groups: every candidate block's summary is scored."""
    select_groups: int = 2
    """n2: the groups whose blocks a query scores (with ``select_group_size`` > 0)."""
    select_pooling: str = "mean"
    """How a block's tokens become its summary. ``mean``: the plain mean of its keys and values.
    ``learned``: attention pooling, weights softmax(v_t . u / sqrt(d)) over the block with a learned u per
    layer and KV head (zeros at init: the mean), so that a block's salient tokens outweigh its filler; the
    weights come from the values, which carry no rotation."""
    select_score: str = "mean"
    """How a query ranks its candidate blocks (and groups). ``mean``: q . summary key, the block's mean
    (or pooled) key. ``bound``: Quest's upper bound of q . k over the block's keys (Tang et al. 2024),
    sum_d max(q_d min_d, q_d max_d) from the elementwise minimum and maximum of its keys (a group's: of its
    blocks'), so that one key that matches the query ranks its block first however the other keys of
    the block average out (experiments/selection: the mean's ranking was MQAR's bottleneck). Either way
    summed over the query heads of the KV head; the summaries as keys stay the means."""
    select_summary_bias: float | None = None
    """A learned logit bias on the summary keys: each attention layer owns one per KV head (``select_bias``,
    initialised to this value), added to every summary key's score (after the 1/sqrt(d) scaling, for all
    query heads of that KV head) so that at init the summaries take a small share of each softmax (-4 gives
    them e^-4 of a key's weight); training moves it. The choice of blocks does not use it (a constant per
    head ranks the summaries the same). Only meaningful with ``select_blocks`` > 0 and
    ``select_summary_keys`` (otherwise no layer owns one). None (the default) = no bias, exactly as before."""
    select_token_bias: float | None = None
    """A learned logit bias on the chosen blocks' tokens, as ``select_summary_bias`` is on the summaries: one
    per KV head and layer (``select_token_bias`` of the attention module, initialised to this value), added
    to the score of every chosen token that is not already one of the query's graph keys. At init the
    chosen tokens then take a small share of each softmax instead of diluting the window's (each of up to
    n*b of them e^-4 of a key's weight at -4); training raises it where they help. Only meaningful with
    ``select_blocks`` > 0. None (the default) = no bias, exactly as before (experiments/selection: the
    chosen tokens cost LM loss early in training without it)."""
    select_router_rank: int = 0
    """r: a router of the choice apart from attention (DSA's indexer, in low rank): each attention layer owns
    ``select_route_down`` [Hq, d, r], ``select_route_up`` [Hq, r, d] and their key-side twins [Hkv, ...],
    and the choice ranks with q + (q @ down) @ up against the summaries and bounds of k + (k @ key down) @
    key up instead of q and k (``graph.selection.route_queries`` / ``route_keys``; the ups start at zero,
    so a new router ranks as q and k do). Only the runner's routing loss (``module.select_routing_loss``)
    trains it, on detached inputs, so attention's q and keys learn from the language-model loss alone.
    Needs ``select_blocks`` > 0. 0 (the default) = no router, exactly as before."""

    def __post_init__(self) -> None:
        self.dilated_offsets = [int(o) for o in self.dilated_offsets]
        self.validate()

    # ------------------------------------------------------------------ validation
    def validate(self) -> None:
        """Raise ValueError on the first rule broken, the rules checked in the order of the helpers."""
        self._check_integer_fields()
        self._check_head_layout()
        self._check_values()
        self._check_selection()
        self._check_window()

    def _fail(self, name: str, why: str) -> NoReturn:
        raise ValueError(f"HaloConfig.{name}={getattr(self, name)!r}: {why}")

    def _check_integer_fields(self) -> None:
        for names, minimum, why in _INTEGER_RULES:
            for name in names:
                value = getattr(self, name)
                if not _is_int(value) or value < minimum:
                    self._fail(name, why)

    def _check_head_layout(self) -> None:
        if self.hidden_size % self.num_heads:
            self._fail("hidden_size", f"must be divisible by num_heads={self.num_heads}")
        if self.num_heads % self.num_kv_heads:
            self._fail("num_heads", f"must be divisible by num_kv_heads={self.num_kv_heads}")
        if (self.hidden_size // self.num_heads) % 2:
            self._fail("hidden_size", "hidden_size / num_heads (head_dim) must be even for RoPE")

    def _check_choice(self, name: str, choices: tuple[str, ...]) -> None:
        if getattr(self, name) not in choices:
            self._fail(name, f"must be one of {choices}")

    def _check_values(self) -> None:
        if not 0.0 <= self.dropout < 1.0:
            self._fail("dropout", "must be in [0, 1)")
        if any(o < 1 for o in self.dilated_offsets):
            self._fail("dilated_offsets", "every offset must be a positive integer")
        for name, choices in _CHOICES:
            self._check_choice(name, choices)
        for name, bound in _LOWER_BOUNDS:
            if getattr(self, name) <= bound:
                self._fail(name, f"must be > {bound}")
        if not _is_int(self.short_conv) or self.short_conv < 0:
            self._fail("short_conv", "must be a non-negative integer (a kernel size; 0 = off)")

    def _check_selection(self) -> None:
        if self.select_group_size == 1:
            self._fail(
                "select_group_size", "a group of one block is the block itself: use 0 (no groups) or >= 2"
            )
        self._check_choice("select_pooling", SELECT_POOLINGS)
        self._check_choice("select_score", SELECT_SCORES)
        if not isinstance(self.select_summary_keys, bool):
            self._fail("select_summary_keys", "must be true or false")
        for name, what in (("select_summary_bias", "summary keys'"), ("select_token_bias", "chosen tokens'")):
            bias = getattr(self, name)
            if bias is not None and (
                isinstance(bias, bool) or not isinstance(bias, (int, float)) or not math.isfinite(bias)
            ):
                self._fail(name, f"must be a finite number (the {what} initial logit bias) or None")
        if self.select_router_rank and not self.selects:
            self._fail(
                "select_router_rank", "a router ranks content-selected blocks: needs select_blocks > 0"
            )
        if self.selects and self.attention_backend in SELECTION_UNSUPPORTED:
            self._fail(
                "attention_backend",
                f"does not compute the content-selected blocks (select_blocks={self.select_blocks}): use "
                "auto, reference, masked or triton",
            )

    def _check_window(self) -> None:
        if self.local_window >= self.max_seq_len and not self.allow_full_window:
            self._fail(
                "local_window",
                f"covers the whole sequence (max_seq_len={self.max_seq_len}): every token would attend to "
                "every earlier one, so HALO-S would silently be dense attention; use a local_window below "
                "max_seq_len, or set allow_full_window=True if a full window is what you want",
            )

    # ------------------------------------------------------------------ derived
    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def dilated_distances(self) -> tuple[int, ...]:
        """Distinct dilated distances that add edges beyond the window (sorted)."""
        scale = self.local_window if self.dilation_rule == "window_multiple" else 1
        return tuple(sorted({o * scale for o in self.dilated_offsets if o * scale >= self.local_window}))

    @property
    def num_neighbors(self) -> int:
        """K: distinct keys of a token whose past is long enough (globals, window, dilated, random), the
        content-selected keys not counted (see ``halo_lab.graph.selection.keys_per_query``)."""
        return self.num_globals + self.local_window + len(self.dilated_distances) + self.num_random

    @property
    def selects(self) -> bool:
        """Whether the graph has a content-selected part (``select_blocks`` > 0)."""
        return self.select_blocks > 0

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["dilated_offsets"] = list(self.dilated_offsets)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HaloConfig:
        """Build from a dict: unknown keys are warned about and ignored, missing keys take defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            warnings.warn(f"HaloConfig: ignoring unknown keys {unknown}", stacklevel=2)
        kw = {k: v for k, v in d.items() if k in known}
        if "allow_full_window" not in kw:
            # A config saved before the window rule existed: load it as it was trained, and say so.
            window = kw.get("local_window", cls.local_window)
            length = kw.get("max_seq_len", cls.max_seq_len)
            if isinstance(window, int) and isinstance(length, int) and window >= length:
                warnings.warn(
                    f"HaloConfig: local_window={window} covers the whole sequence (max_seq_len={length}): "
                    "this saved model's HALO-S attention is dense; loaded with allow_full_window=True",
                    stacklevel=2,
                )
                kw["allow_full_window"] = True
        return cls(**kw)

    def replace(self, **changes: Any) -> HaloConfig:
        return dataclasses.replace(self, **changes)


# ------------------------------------------------------------------------------------------ presets
# Named sizes (the reference's examples), as changes to the defaults above. The one table of sizes: the
# runner's `model=<name>` options are registered from it (halo_lab/runner/options.py register_model_options).
PRESETS: dict[str, dict[str, Any]] = {
    "halo_tiny": {"hidden_size": 128, "num_layers": 2, "num_heads": 4, "max_seq_len": 512, "dropout": 0.0},
    "halo_small": {"hidden_size": 256, "num_layers": 4, "num_heads": 4, "max_seq_len": 2048},
    "halo_medium": {"num_layers": 8},
    "halo_large": {"hidden_size": 1024, "num_layers": 12, "num_heads": 16, "num_kv_heads": 4},
    "halo_xl": {
        "hidden_size": 1536,
        "num_layers": 16,
        "num_heads": 24,
        "num_kv_heads": 6,
        "max_seq_len": 8192,
        "local_window": 128,
        "dilated_offsets": [1, 2, 4, 8, 16],
    },
    "halo_long_ctx": {
        "hidden_size": 1024,
        "num_layers": 12,
        "num_heads": 16,
        "num_kv_heads": 4,
        "max_seq_len": 32768,
        "num_globals": 4,
        "local_window": 128,
        "dilated_offsets": [1, 2, 4, 8, 16, 32],
        "num_random": 4,
    },
}


def _from_name(cls, name: str, **changes: Any) -> HaloConfig:
    """``HaloConfig.from_name("halo_small", vocab_size=50257)``: a preset of :data:`PRESETS`."""
    if name not in PRESETS:
        raise ValueError(f"HaloConfig.from_name({name!r}): unknown preset; choose one of {sorted(PRESETS)}")
    return cls(**{**PRESETS[name], **changes})


HaloConfig.from_name = classmethod(_from_name)  # type: ignore[attr-defined]
