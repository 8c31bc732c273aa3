"""The runner's config: where ``conf/`` is, composing it without running, and checking it.

Checks run before any data is touched, in two layers, and every failure is a :class:`ConfigError` whose
message starts with the full dotted key (``trainer.gradient_clip_val='high': ...``):
1. types: each checked node is merged into a structured config (``OmegaConf.structured``; the model
   node over the ``HaloConfig`` dataclass itself), so a wrong key or type is named by OmegaConf;
2. values: ``HaloConfig`` validates itself; the runner's own ranges (steps, lr, ...) are listed below.
A mandatory value left at ``???`` (``data=text`` without ``data.path``) and a device profile this machine
cannot run (``device=h100`` without a CUDA GPU) are ConfigErrors too, before any work.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

log = logging.getLogger("halo_lab.train")

WANDB_MODES = ("online", "offline", "disabled", "shared")


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the dotted key."""


# ---------------------------------------------------------------------------------------------- resolvers
_NAME_MAX = 200  # bytes; file systems allow 255 per path component


def job_dirname(override_dirname: str) -> str:
    """A sweep job's directory name: its overrides (``module.arch=dense,seed=2``), with "/" replaced so a
    value never nests directories, shortened with a hash when it would exceed a file name's length."""
    name = str(override_dirname).replace("/", "_") or "default"
    if len(name.encode()) > _NAME_MAX:
        digest = hashlib.sha1(name.encode()).hexdigest()[:8]
        name = name.encode()[: _NAME_MAX - 10].decode(errors="ignore") + "~" + digest
    return name


def register_resolvers() -> None:
    """OmegaConf resolvers used by conf/ (idempotent). Imported with this module."""
    if not OmegaConf.has_resolver("halo_dirname"):
        OmegaConf.register_new_resolver("halo_dirname", job_dirname)
    if not OmegaConf.has_resolver("halo_div"):
        # Integer division, at least 1: conf/experiment sizes a batch as tokens_per_batch // seq_len.
        OmegaConf.register_new_resolver("halo_div", lambda a, b: max(1, int(a) // int(b)))


register_resolvers()


# ---------------------------------------------------------------------------------------------- config dir
def conf_dir() -> Path:
    """The top-level ``conf/`` directory, found the same way under ``python -m``, an import or a console
    script (Hydra resolves a relative ``config_path`` against the caller's module or file, which differs
    between those): $HALO_LAB_CONF, else ``conf/`` next to the package (a source checkout or an editable
    install), else ``./conf``."""
    candidates = []
    if os.environ.get("HALO_LAB_CONF"):
        candidates.append(Path(os.environ["HALO_LAB_CONF"]))
    candidates += [Path(__file__).resolve().parents[2] / "conf", Path.cwd() / "conf"]
    for c in candidates:
        if (c / "train.yaml").is_file():
            return c.resolve()
    raise FileNotFoundError(
        f"halo_lab: no conf/train.yaml in {[str(c) for c in candidates]}; run from the repository root "
        "or set HALO_LAB_CONF to the conf directory"
    )


def compose_config(
    overrides: Sequence[str] = (), output_dir: str | os.PathLike | None = None, config_name: str = "train"
) -> DictConfig:
    """Compose the runner's config without running it (tests, notebooks).

    Sets Hydra's global state so ``${hydra:...}`` interpolations resolve, with ``output_dir`` as the run
    directory (default: a fresh temporary directory). The returned config keeps its ``hydra`` node.
    """
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

    from halo_lab.runner.options import register_options

    register_options()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(conf_dir()), version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=list(overrides), return_hydra_config=True)
    out = Path(output_dir) if output_dir is not None else Path(tempfile.mkdtemp(prefix="halo_run_"))
    with open_dict_rw(cfg):
        cfg.hydra.runtime.output_dir = str(out.resolve())
        cfg.hydra.job.num = 0
    HydraConfig.instance().set_config(cfg)
    return cfg


class open_dict_rw:
    """``open_dict`` + ``read_write`` in one context manager."""

    def __init__(self, cfg: DictConfig):
        from omegaconf import open_dict, read_write

        self._ctx = [read_write(cfg), open_dict(cfg)]

    def __enter__(self):
        for c in self._ctx:
            c.__enter__()

    def __exit__(self, *exc):
        for c in reversed(self._ctx):
            c.__exit__(*exc)


def to_plain(cfg: Any) -> Any:
    """A resolved plain-container copy: what checkpoints and W&B get (torch >= 2.6 loads checkpoints
    with ``weights_only=True``, which refuses OmegaConf objects)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return cfg


# ---------------------------------------------------------------------------------------------- types
# The keys the runner itself reads from nodes that also carry free-form keys (Trainer arguments,
# dataset options): only these are typed; the rest goes to the object's constructor, which checks it.
@dataclass
class DataKeys:
    seq_len: int = 256
    batch_size: Optional[int] = None  # noqa: UP045 (OmegaConf reads typing.Optional)


@dataclass
class TrainerKeys:
    max_steps: int = -1
    max_epochs: Optional[int] = None  # noqa: UP045
    val_check_interval: Optional[float] = None  # noqa: UP045
    accumulate_grad_batches: Optional[int] = None  # noqa: UP045
    gradient_clip_val: Optional[float] = None  # noqa: UP045
    auto_batch_size: bool = False


@dataclass
class OptimizerKeys:
    lr: Optional[float] = None  # noqa: UP045
    weight_decay: Optional[float] = None  # noqa: UP045


@dataclass
class SchedulerKeys:
    warmup_steps: Optional[int] = None  # noqa: UP045
    total_steps: Optional[int] = None  # noqa: UP045
    min_lr_ratio: Optional[float] = None  # noqa: UP045


_TYPED = {"data": DataKeys, "trainer": TrainerKeys, "optimizer": OptimizerKeys, "scheduler": SchedulerKeys}


def _typed(node: str, schema: type, values: Any, only_known: bool) -> DictConfig:
    """``values`` merged into ``OmegaConf.structured(schema)``; a wrong key or type -> ConfigError."""
    values = dict(values or {})
    if only_known:
        names = {f.name for f in dataclasses.fields(schema)}
        values = {k: v for k, v in values.items() if k in names}
    try:
        return OmegaConf.merge(OmegaConf.structured(schema), values)
    except OmegaConfBaseException as exc:
        key = f"{node}.{exc.full_key}" if exc.full_key else node
        first = str(exc.msg or exc).splitlines()[0]
        value = OmegaConf.select(OmegaConf.create(values), str(exc.full_key)) if exc.full_key else None
        shown = f"={value!r}" if value is not None else ""
        raise ConfigError(f"{key}{shown}: {first}") from None


# ---------------------------------------------------------------------------------------------- model
_FIELD_RE = re.compile(r"HaloConfig\.(\w+)=")


def choice(cfg: DictConfig, group: str) -> str | None:
    """The option chosen for a config group (``ablation=no_random`` -> "no_random"): from the config's
    own ``hydra`` node when it has one (composed configs), else from the running Hydra job."""
    from hydra.core.hydra_config import HydraConfig

    node = OmegaConf.select(cfg, "hydra.runtime.choices", default=None)
    if node is None and HydraConfig.initialized():
        node = HydraConfig.get().runtime.choices
    value = node.get(group) if node is not None else None
    return None if value is None else str(value)


def ablation_name(cfg: DictConfig) -> str:
    """The ablation option of a run (its files are partial overrides of the model node, so the name is
    only in Hydra's choices)."""
    return choice(cfg, "ablation") or "full"


def _overridden(cfg: DictConfig, key: str) -> str | None:
    """The value given to ``key`` on the command line (a sweep's parameters included), else None."""
    from hydra.core.hydra_config import HydraConfig

    task = OmegaConf.select(cfg, "hydra.overrides.task", default=None)
    if task is None and HydraConfig.initialized():
        task = HydraConfig.get().overrides.task
    for override in task or ():
        name, _, value = str(override).lstrip("+~").partition("=")
        if name == key:
            return value
    return None


def _arch(cfg: DictConfig, module: dict[str, Any]) -> str:
    """``module.arch``, which the ``variant`` option sets (conf/variant/): the one way to pick the
    architecture; ``module.arch=...`` on the command line is a ConfigError naming it."""
    from halo_lab.model import ARCHS

    given = _overridden(cfg, "module.arch")
    if given is not None:
        variants = " | ".join(sorted(p.stem for p in (conf_dir() / "variant").glob("*.yaml")))
        raise ConfigError(
            f"module.arch={given}: not set on the command line; the architecture is picked with "
            f"variant=NAME ({variants}): variant={'halo' if given == 'halo' else 'dense'}"
        )
    arch = module.get("arch", "halo")
    if arch not in ARCHS:
        raise ConfigError(f"module.arch={arch!r}: must be one of {tuple(ARCHS)}")
    return arch


def build_model_config(cfg: DictConfig, vocab_size: int | None = None) -> tuple[dict[str, Any], str, bool]:
    """The HaloConfig dict of the model node (the ablation option already merged into it by Hydra), the
    architecture (``module.arch``, which the ``variant`` option sets) and gradient checkpointing
    (``module.gradient_checkpointing``). A removed model option (``model=dense_small``) or ``module.arch``
    on the command line is a ConfigError naming ``variant=``.

    Types through ``OmegaConf.structured(HaloConfig)``, values through HaloConfig's own validation, both
    re-raised as ConfigError naming the key (``model.hidden_size``). ``vocab_size`` (from the data) fills
    a null model.vocab_size; a placeholder validates the rest before any data is read.
    """
    from halo_lab.config import HaloConfig
    from halo_lab.runner.options import MOVED_KEY

    model = dict(to_plain(cfg.model))
    if MOVED_KEY in model:  # a removed model option (model=dense_small)
        raise ConfigError(f"model={choice(cfg, 'model')}: {model[MOVED_KEY]}")
    module = dict(to_plain(cfg.get("module")) or {})
    arch = _arch(cfg, module)
    gc = bool(module.get("gradient_checkpointing", False))
    fields = set(HaloConfig.__dataclass_fields__)
    unknown = sorted(set(model) - fields)
    if unknown:
        raise ConfigError(f"model.{unknown[0]}: not a HaloConfig field (known: {sorted(fields)})")
    _typed("model", HaloConfig, {k: v for k, v in model.items() if v is not None}, only_known=False)
    ablation = ablation_name(cfg)
    if arch == "dense" and ablation != "full":
        log.warning(
            "ablation=%s has no effect on module.arch=dense (the dense baseline has no graph)", ablation
        )
    window, length = model.get("local_window"), model.get("max_seq_len")
    if arch == "dense" and isinstance(window, int) and isinstance(length, int) and window >= length:
        model.setdefault("allow_full_window", True)  # the dense twin has no window: nothing to guard
    if model.get("vocab_size") is None:
        model["vocab_size"] = vocab_size
    elif vocab_size is not None and model["vocab_size"] < vocab_size:
        raise ConfigError(
            f"model.vocab_size={model['vocab_size']}: smaller than the tokenizer's vocabulary ({vocab_size}); "
            "set it to null to follow the data"
        )
    probe = dict(model)
    if probe["vocab_size"] is None:
        probe["vocab_size"] = 256  # placeholder until the data's tokenizer is known
    try:
        HaloConfig(**probe)
    except (ValueError, TypeError) as exc:
        m = _FIELD_RE.search(str(exc))
        if m:
            name = m.group(1)
            raise ConfigError(f"model.{name}={probe.get(name)!r}: {str(exc).split(': ', 1)[-1]}") from exc
        raise ConfigError(f"model: {exc}") from exc
    return model, arch, gc


# ---------------------------------------------------------------------------------------------- values
def _check(cond: bool, key: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: {why}")


def validate_config(cfg: DictConfig) -> dict[str, Any]:
    """Check everything that can be checked without touching data; raise ConfigError naming the key.

    Returns what the runner needs next: ``model_config`` (vocab_size may still be None), ``arch``,
    ``gradient_checkpointing``, ``device`` (the resolved device profile) and the module's selection options
    (``_module_options``).
    """
    check_missing(cfg)
    model_config, arch, gc = build_model_config(cfg)
    t = {
        node: _typed(node, schema, to_plain(cfg.get(node)), only_known=True)
        for node, schema in _TYPED.items()
    }
    data, trainer, opt, sched = t["data"], t["trainer"], t["optimizer"], t["scheduler"]

    if "seq_len" in (cfg.get("data") or {}):
        _check(data.seq_len > 0, "data.seq_len", data.seq_len, "must be a positive integer")
        _check(
            data.seq_len <= model_config["max_seq_len"],
            "data.seq_len",
            data.seq_len,
            f"exceeds model.max_seq_len={model_config['max_seq_len']}",
        )
        window = model_config.get("local_window")
        if arch == "halo" and isinstance(window, int) and window >= data.seq_len and data.seq_len > 0:
            log.warning(
                "model.local_window=%d covers every training sequence (data.seq_len=%d): HALO-S trains as "
                "dense attention (its dilated and random edges add nothing); use a local_window "
                "below data.seq_len to train the sparse graph",
                window,
                data.seq_len,
            )
    bs = data.batch_size
    _check(bs is None or bs > 0, "data.batch_size", bs, "must be a positive integer or null")

    steps, epochs = trainer.max_steps, trainer.max_epochs
    _check(
        steps > 0 or (steps == -1 and (epochs or 0) > 0),
        "trainer.max_steps",
        steps,
        "must be a positive integer (or -1 with trainer.max_epochs > 0)",
    )
    vci, acc, clip = trainer.val_check_interval, trainer.accumulate_grad_batches, trainer.gradient_clip_val
    _check(vci is None or vci > 0, "trainer.val_check_interval", vci, "must be > 0")
    _check(acc is None or acc > 0, "trainer.accumulate_grad_batches", acc, "must be >= 1")
    _check(clip is None or clip >= 0, "trainer.gradient_clip_val", clip, "must be >= 0 or null")

    _check(opt.lr is None or opt.lr > 0, "optimizer.lr", opt.lr, "must be > 0")
    wd = opt.weight_decay
    _check(wd is None or wd >= 0, "optimizer.weight_decay", wd, "must be >= 0")
    warm, total, mlr = sched.warmup_steps, sched.total_steps, sched.min_lr_ratio
    _check(warm is None or warm >= 0, "scheduler.warmup_steps", warm, "must be >= 0")
    _check(
        total is None or total == -1 or total > 0,
        "scheduler.total_steps",
        total,
        "must be a positive integer, -1 or null (the trainer's estimate)",
    )
    _check(mlr is None or 0.0 <= mlr <= 1.0, "scheduler.min_lr_ratio", mlr, "must be in [0, 1]")
    _check_warmup(cfg, warm, total, steps)

    mode = OmegaConf.select(cfg, "logger.wandb.mode", default=None)
    _check(
        mode is None or mode in WANDB_MODES,
        "logger.wandb.mode",
        mode,
        f"must be null or one of {WANDB_MODES}",
    )

    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "", "auto", "last"):
        _check(Path(str(ckpt)).expanduser().is_file(), "ckpt_path", ckpt, "no such checkpoint file")

    module = _module_options(to_plain(cfg.get("module")) or {}, model_config, arch)

    device = _device(cfg)
    _warn_large_vocab_on_cpu(cfg, model_config, device)
    return {
        "model_config": model_config,
        "arch": arch,
        "gradient_checkpointing": gc,
        "device": device,
        **module,
    }


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _module_options(module: dict, model_config: dict, arch: str) -> dict[str, Any]:
    """The module group's selection options, checked: the biases' rate scale, the routing loss's weight
    (it trains the ranking: a model that selects), its queries, a router's need of it, the dense warm-up."""
    scale = module.get("select_bias_lr_scale", 1.0)
    _check(_number(scale) and scale > 0, "module.select_bias_lr_scale", scale, "must be a number > 0")
    weight = module.get("select_routing_loss", 0.0)
    _check(_number(weight) and weight >= 0, "module.select_routing_loss", weight, "must be a number >= 0")
    selects = arch == "halo" and (model_config.get("select_blocks") or 0) > 0
    why = "needs a HALO-S model with content-selected blocks (variant=halo_select or local_select)"
    _check(weight == 0 or selects, "module.select_routing_loss", weight, why)
    rank = model_config.get("select_router_rank") or 0  # HaloConfig checks its type and the selection
    why = "the router learns from the routing loss alone: set module.select_routing_loss > 0 (e.g. 1)"
    _check(not rank or weight > 0 or arch != "halo", "model.select_router_rank", rank, why)
    queries, warmup = module.get("select_routing_queries", 64), module.get("select_dense_warmup", 0)
    _check(type(queries) is int and queries > 0, "module.select_routing_queries", queries, "must be an integer > 0")  # fmt: skip
    _check(type(warmup) is int and warmup >= 0 and (not warmup or arch == "halo"), "module.select_dense_warmup", warmup, "must be an integer >= 0 (steps), for HALO-S: dense is dense")  # fmt: skip
    return {"select_bias_lr_scale": float(scale), "select_routing_loss": float(weight),
            "select_routing_queries": queries, "select_dense_warmup": warmup}  # fmt: skip


_MISSING_HINTS = {
    "data.path": "the file to train on: data.path=/path/to/file (several: data.path=[a.txt,b.txt])",
}


def check_missing(cfg: DictConfig) -> None:
    """A mandatory value (``???`` in conf/, e.g. conf/data/text.yaml ``path``) left unset: a ConfigError
    naming the full key (``data.path``) and how to give it, instead of OmegaConf's traceback naming
    ``path`` when the data node is built."""
    missing = sorted(k for k in OmegaConf.missing_keys(cfg) if not str(k).startswith("hydra."))
    if not missing:
        return
    key = str(missing[0])
    option = choice(cfg, key.split(".")[0])
    needed = f" (needed by {key.split('.')[0]}={option})" if option else ""
    raise ConfigError(f"{key}: no value given{needed}; set {_MISSING_HINTS.get(key, f'{key}=VALUE')}")


def _device(cfg: DictConfig) -> dict[str, Any]:
    """The resolved device profile; a profile this machine cannot run (``device=h100`` without a CUDA GPU)
    is a ConfigError here, before any work, instead of Lightning's MisconfigurationException later."""
    from halo_lab.device import resolve_device_config

    try:
        device = resolve_device_config(dict(to_plain(cfg.device)))
    except ValueError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith("device") else f"device: {msg}") from exc
    missing = _missing_accelerator(device.get("accelerator"))
    if missing:
        raise ConfigError(
            f"device={device.get('requested', device.get('name'))}: the {device.get('name')} profile trains "
            f"on {missing}; use device=auto or device=cpu"
        )
    return device


def _missing_accelerator(accelerator: str | None) -> str | None:
    """What is missing on this machine for a profile's Lightning accelerator (None: nothing)."""
    import torch

    if accelerator == "gpu" and not torch.cuda.is_available():
        build = "" if torch.version.cuda else f" (torch {torch.__version__} is a CPU-only build)"
        return f"a CUDA GPU, and there is no CUDA GPU here{build}"
    if accelerator == "mps" and not torch.backends.mps.is_available():
        return "Apple MPS, and there is no MPS device here"
    return None


def _check_warmup(cfg: DictConfig, warm: int | None, total: int | None, steps: int) -> None:
    """A warmup as long as the run: the configured default (not given on the command line) is shortened
    to a tenth of the run with one info line (trainer=debug, a short trainer.max_steps); a warmup given on
    the command line is kept, with a warning."""
    horizon = total if total not in (None, -1) else (steps if steps > 0 else None)
    if not warm or horizon is None or warm < horizon:
        return
    if _overridden(cfg, "scheduler.warmup_steps") is None:
        with open_dict_rw(cfg):
            cfg.scheduler.warmup_steps = horizon // 10
        log.info(
            "scheduler.warmup_steps=%d (a tenth of this %d-step run; the configured %d would outlast it)",
            horizon // 10,
            horizon,
            warm,
        )
        return
    log.warning(
        "scheduler.warmup_steps=%d >= the schedule's %d steps (scheduler.total_steps=%s, trainer.max_steps"
        "=%s): the learning rate never leaves its warmup (never reaches optimizer.lr); lower "
        "scheduler.warmup_steps",
        warm,
        horizon,
        total,
        steps,
    )


def _warn_large_vocab_on_cpu(cfg: DictConfig, model_config: dict[str, Any], device: dict[str, Any]) -> None:
    """tiktoken's 100K-token vocabulary on a CPU: the embedding and output layers dwarf a small model and
    the logits take gigabytes (data=jsonl with tiktoken: 26M parameters, 10.7 GB); one warning."""
    if device.get("accelerator") != "cpu" or model_config.get("vocab_size") is not None:
        return
    if str(OmegaConf.select(cfg, "data.tokenizer", default="")) != "tiktoken":
        return
    hidden = int(model_config.get("hidden_size") or 0)
    matrices = 1 if model_config.get("tie_embeddings") else 2
    log.warning(
        "data.tokenizer=tiktoken on a CPU: its ~100K-token vocabulary gives this model ~%.0fM embedding and "
        "output parameters (hidden_size %d) and logits of gigabytes; data.tokenizer=char (256 ids) trains "
        "the same text in a fraction of the memory and time",
        matrices * 100_277 * hidden / 1e6,
        hidden,
    )
