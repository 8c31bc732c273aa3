"""Runner helpers: config location and validation, resume paths, W&B ids, the DDP relaunch under Hydra.

Kept apart from ``train.py`` so tests, notebooks and later tools (reports, sweeps) can compose and check
the same config without running anything.
"""

from __future__ import annotations

import logging
import os
import re
import resource
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("halo_lab.train")

# Keys of a `model` option that are not HaloConfig fields.
MODEL_RUNNER_KEYS = ("arch", "gradient_checkpointing")
ARCHS = ("halo", "dense")
WANDB_MODES = ("online", "offline", "disabled", "shared")
WANDB_ID_FILE = "wandb_run_id.txt"


class ConfigError(ValueError):
    """A config value that cannot work; the message starts with the dotted key."""


# ---------------------------------------------------------------------------------------------- resolvers
_NAME_MAX = 200  # bytes; file systems allow 255 per path component


def job_dirname(override_dirname: str) -> str:
    """A sweep job's directory name: its overrides (``model.arch=dense,seed=2``), with "/" replaced so a
    value never nests directories, shortened with a hash when it would exceed a file name's length."""
    import hashlib

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
    """The top-level ``conf/`` directory, found the same way under ``python -m``, an import or a
    console script (pitfall 6): $HALO_LAB_CONF, else ``conf/`` next to the package (a source checkout or
    an editable install), else ``./conf``."""
    candidates = []
    if os.environ.get("HALO_LAB_CONF"):
        candidates.append(Path(os.environ["HALO_LAB_CONF"]))
    candidates += [Path(__file__).resolve().parent.parent / "conf", Path.cwd() / "conf"]
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
    """Compose the runner's config without running it (tests, notebooks; pitfall 7).

    Sets Hydra's global state so ``${hydra:...}`` interpolations resolve, with ``output_dir`` as the run
    directory (default: a fresh temporary directory). The returned config keeps its ``hydra`` node.
    """
    import tempfile

    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.core.hydra_config import HydraConfig

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
    """A resolved plain-container copy (what checkpoints and W&B get; pitfall 5)."""
    if isinstance(cfg, DictConfig) or OmegaConf.is_config(cfg):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)
    return cfg


# ---------------------------------------------------------------------------------------------- validation
_FIELD_RE = re.compile(r"HaloConfig\.(\w+)=")


def build_model_config(cfg: DictConfig, vocab_size: int | None = None) -> tuple[dict[str, Any], str, bool]:
    """The HaloConfig dict (model option + ablation overrides), arch and gradient checkpointing.

    Validates through HaloConfig and re-raises its error as a ConfigError naming the config key
    (``model.hidden_size`` or ``ablation.model_overrides.num_globals``). ``vocab_size`` (from the data)
    fills a null model.vocab_size; a placeholder validates the rest before any data is read.
    """
    from halo_lab.config import HaloConfig

    model = dict(to_plain(cfg.model))
    arch = model.pop("arch", "halo")
    gc = bool(model.pop("gradient_checkpointing", False))
    if arch not in ARCHS:
        raise ConfigError(f"model.arch={arch!r}: must be one of {ARCHS}")
    overrides = dict(to_plain(OmegaConf.select(cfg, "ablation.model_overrides", default={})) or {})
    fields = set(HaloConfig.__dataclass_fields__)
    for source, keys in (("model", model), ("ablation.model_overrides", overrides)):
        unknown = sorted(set(keys) - fields)
        if unknown:
            raise ConfigError(f"{source}.{unknown[0]}: not a HaloConfig field (known: {sorted(fields)})")
    ablation = OmegaConf.select(cfg, "ablation.name", default="full")
    if arch == "dense" and overrides:
        log.warning(
            "ablation=%s has no effect on model.arch=dense (the dense baseline has no graph)", ablation
        )
    merged = {**model, **overrides}
    if merged.get("vocab_size") is None:
        merged["vocab_size"] = vocab_size
    elif vocab_size is not None and merged["vocab_size"] < vocab_size:
        raise ConfigError(
            f"model.vocab_size={merged['vocab_size']}: smaller than the tokenizer's vocabulary ({vocab_size}); "
            "set it to null to follow the data"
        )
    probe = dict(merged)
    if probe["vocab_size"] is None:
        probe["vocab_size"] = 256  # placeholder until the data's tokenizer is known
    try:
        HaloConfig(**probe)
    except (ValueError, TypeError) as exc:
        m = _FIELD_RE.search(str(exc))
        if m:
            name = m.group(1)
            key = f"ablation.model_overrides.{name}" if name in overrides else f"model.{name}"
            raise ConfigError(f"{key}={probe.get(name)!r}: {str(exc).split(': ', 1)[-1]}") from exc
        raise ConfigError(f"model: {exc}") from exc
    return merged, arch, gc


def _check(cond: bool, key: str, value: Any, why: str) -> None:
    if not cond:
        raise ConfigError(f"{key}={value!r}: {why}")


def _num(cfg: DictConfig, key: str) -> Any:
    return OmegaConf.select(cfg, key, default=None)


def validate_config(cfg: DictConfig) -> dict[str, Any]:
    """Check everything that can be checked without touching data; raise ConfigError naming the key.

    Returns what the runner needs next: ``model_config`` (vocab_size may still be None), ``arch``,
    ``gradient_checkpointing`` and ``device`` (the resolved device profile).
    """
    model_config, arch, gc = build_model_config(cfg)

    seq_len = _num(cfg, "data.seq_len")
    if seq_len is not None:
        _check(
            isinstance(seq_len, int) and seq_len > 0, "data.seq_len", seq_len, "must be a positive integer"
        )
        _check(
            seq_len <= model_config["max_seq_len"],
            "data.seq_len",
            seq_len,
            f"exceeds model.max_seq_len={model_config['max_seq_len']}",
        )
    bs = _num(cfg, "data.batch_size")
    _check(
        bs is None or (isinstance(bs, int) and bs > 0),
        "data.batch_size",
        bs,
        "must be a positive integer or null",
    )

    max_steps = _num(cfg, "trainer.max_steps")
    max_epochs = _num(cfg, "trainer.max_epochs")
    _check(
        (isinstance(max_steps, int) and max_steps > 0) or (max_steps == -1 and (max_epochs or 0) > 0),
        "trainer.max_steps",
        max_steps,
        "must be a positive integer (or -1 with trainer.max_epochs > 0)",
    )
    vci = _num(cfg, "trainer.val_check_interval")
    _check(
        vci is None or (isinstance(vci, (int, float)) and vci > 0),
        "trainer.val_check_interval",
        vci,
        "must be > 0",
    )
    acc = _num(cfg, "trainer.accumulate_grad_batches")
    _check(
        acc is None or (isinstance(acc, int) and acc > 0),
        "trainer.accumulate_grad_batches",
        acc,
        "must be >= 1",
    )
    clip = _num(cfg, "trainer.gradient_clip_val")
    _check(clip is None or clip >= 0, "trainer.gradient_clip_val", clip, "must be >= 0 or null")

    lr = _num(cfg, "optimizer.lr")
    _check(lr is None or (isinstance(lr, (int, float)) and lr > 0), "optimizer.lr", lr, "must be > 0")
    wd = _num(cfg, "optimizer.weight_decay")
    _check(wd is None or wd >= 0, "optimizer.weight_decay", wd, "must be >= 0")
    warm = _num(cfg, "scheduler.warmup_steps")
    _check(
        warm is None or (isinstance(warm, int) and warm >= 0), "scheduler.warmup_steps", warm, "must be >= 0"
    )
    total = _num(cfg, "scheduler.total_steps")
    _check(
        total is None or total == -1 or (isinstance(total, int) and total > 0),
        "scheduler.total_steps",
        total,
        "must be a positive integer, -1 or null (the trainer's estimate)",
    )
    mlr = _num(cfg, "scheduler.min_lr_ratio")
    _check(mlr is None or 0.0 <= mlr <= 1.0, "scheduler.min_lr_ratio", mlr, "must be in [0, 1]")

    mode = _num(cfg, "logger.wandb.mode")
    _check(
        mode is None or mode in WANDB_MODES,
        "logger.wandb.mode",
        mode,
        f"must be null or one of {WANDB_MODES}",
    )

    ckpt = cfg.get("ckpt_path")
    if ckpt not in (None, "", "auto", "last"):
        _check(Path(str(ckpt)).expanduser().is_file(), "ckpt_path", ckpt, "no such checkpoint file")

    from halo_lab.device import resolve_device_config

    try:
        device = resolve_device_config(dict(to_plain(cfg.device)))
    except ValueError as exc:
        msg = str(exc)
        raise ConfigError(msg if msg.startswith("device") else f"device: {msg}") from exc
    return {"model_config": model_config, "arch": arch, "gradient_checkpointing": gc, "device": device}


# ---------------------------------------------------------------------------------------------- resume
def resolve_ckpt_path(value: Any, run_dir: str | os.PathLike) -> str | None:
    """``ckpt_path`` -> the file to resume from, or None for a fresh start.

    ``auto`` (or ``last``): ``<run_dir>/checkpoints/last.ckpt`` when it exists; otherwise the run starts
    from step 0 and says so loudly (Lightning's own ``ckpt_path="last"`` does that silently, pitfall 4).
    """
    if value in (None, ""):
        return None
    if value in ("auto", "last"):
        last = Path(run_dir) / "checkpoints" / "last.ckpt"
        if last.is_file():
            log.info("ckpt_path=%s: resuming from %s", value, last)
            return str(last)
        log.warning(
            "ckpt_path=%s: no checkpoint at %s -- STARTING FROM STEP 0. To resume a run, pass its "
            "directory: hydra.run.dir=<that run's directory> ckpt_path=auto",
            value,
            last,
        )
        return None
    path = Path(str(value)).expanduser()
    if not path.is_file():
        raise ConfigError(f"ckpt_path={value!r}: no such checkpoint file")
    log.info("ckpt_path: resuming from %s", path)
    return str(path)


# ---------------------------------------------------------------------------------------------- W&B
def wandb_mode(configured: str | None) -> str:
    """null -> $WANDB_MODE if set, else online with $WANDB_API_KEY, else offline (never a login prompt)."""
    if configured:
        return configured
    env = os.environ.get("WANDB_MODE")
    if env:
        return "offline" if env == "dryrun" else env
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


def wandb_run_id(run_dir: str | os.PathLike, ckpt_path: str | None, write: bool) -> str:
    """The W&B run id of this run directory: reused on resume, created (and saved) otherwise.

    Looks in the run directory, then in the directory of the checkpoint being resumed.
    """
    run_dir = Path(run_dir)
    places = [run_dir / WANDB_ID_FILE]
    if ckpt_path:
        places.append(Path(ckpt_path).resolve().parent.parent / WANDB_ID_FILE)
    for p in places:
        if p.is_file() and p.read_text().strip():
            return p.read_text().strip()
    import secrets
    import string

    alphabet = string.ascii_lowercase + string.digits  # the shape of W&B's own ids
    run_id = "".join(secrets.choice(alphabet) for _ in range(8))
    if write:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / WANDB_ID_FILE).write_text(run_id + "\n")
    return run_id


# ---------------------------------------------------------------------------------------------- DDP + Hydra
_CONFIG_FLAGS = ("--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd")


def _passthrough_config_flags(argv: Sequence[str]) -> list[str]:
    out: list[str] = []
    it = iter(range(len(argv)))
    for i in it:
        arg = argv[i]
        name = arg.split("=", 1)[0]
        if name in _CONFIG_FLAGS:
            out.append(arg)
            if "=" not in arg and i + 1 < len(argv):
                out.append(argv[i + 1])
                next(it, None)
    return out


def _hydra_quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def ddp_rank_command(local_rank: int) -> tuple[list[str], str]:
    """The command Lightning runs for DDP rank ``local_rank`` > 0 of this Hydra job.

    Lightning's own version re-runs the whole command line with ``hydra.run.dir`` (pitfall 1): inside a
    multirun each rank would run the entire sweep into the wrong directory. This one runs exactly this
    job: its own overrides, no ``-m``, into this job's output directory, writing no ``.hydra/``.
    """
    from hydra.core.hydra_config import HydraConfig
    from hydra.utils import get_original_cwd, to_absolute_path

    import __main__

    hc = HydraConfig.get()
    if getattr(__main__, "__spec__", None) is None:
        command = [sys.executable, to_absolute_path(sys.argv[0])]
    else:
        command = [sys.executable, "-m", __main__.__spec__.name]
    command += _passthrough_config_flags(sys.argv[1:])
    command += list(hc.overrides.task)
    command += [
        f"hydra.run.dir={_hydra_quote(str(hc.runtime.output_dir))}",
        f"hydra.job.name={hc.job.name}_rank{local_rank}",
        "hydra.output_subdir=null",
    ]
    return command, get_original_cwd()


def patch_ddp_relaunch() -> bool:
    """Make Lightning's subprocess DDP launcher use :func:`ddp_rank_command` (idempotent)."""
    patched = False
    for mod_name in (
        "lightning.pytorch.strategies.launchers.subprocess_script",
        "lightning.fabric.strategies.launchers.subprocess_script",
    ):
        try:
            mod = __import__(mod_name, fromlist=["_hydra_subprocess_cmd"])
        except ImportError:
            continue
        if hasattr(mod, "_hydra_subprocess_cmd"):
            mod._hydra_subprocess_cmd = ddp_rank_command
            patched = True
    if not patched:
        log.warning("could not patch Lightning's DDP relaunch: trainer=ddp inside a multirun may misbehave")
    return patched


# ---------------------------------------------------------------------------------------------- data position
def _resumable_loader_class():
    from torch.utils.data import DataLoader

    class ResumableDataLoader(DataLoader):
        """A DataLoader whose position in the epoch survives a checkpoint.

        Lightning saves ``state_dict()`` of stateful train loaders in every checkpoint and calls
        ``load_state_dict()`` on resume. The state is the number of batches yielded in the current epoch
        and the shuffling generator's state at the start of that epoch: the resumed epoch draws the same
        order and skips what was already trained on. (Skipping re-reads those samples; memory-mapped
        windows make that cheap.) Under DDP Lightning swaps in a DistributedSampler, whose order is a
        function of (seed, epoch): the skip alone is then exact.
        """

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._yielded = 0
            self._skip = 0
            self._epoch_gen_state = None
            self._restore_gen_state = None

        def _generator(self):
            return getattr(self.sampler, "generator", None)

        def __iter__(self):
            gen = self._generator()
            if gen is not None:
                if self._restore_gen_state is not None:
                    gen.set_state(self._restore_gen_state)
                self._epoch_gen_state = gen.get_state().clone()
            self._restore_gen_state = None
            skip, self._skip = self._skip, 0
            try:
                if skip >= len(self):  # the checkpoint closed an epoch: the next one starts fresh
                    skip = 0
            except TypeError:
                pass
            self._yielded = 0
            it = super().__iter__()
            for _ in range(skip):
                next(it)
                self._yielded += 1
            for batch in it:
                self._yielded += 1
                yield batch

        def state_dict(self):
            state = {"batches_in_epoch": int(self._yielded)}
            if self._epoch_gen_state is not None:
                state["generator_state"] = self._epoch_gen_state
            return state

        def load_state_dict(self, state):
            self._skip = int(state.get("batches_in_epoch", 0))
            self._restore_gen_state = state.get("generator_state")

    return ResumableDataLoader


_RESUMABLE = None


def make_resumable(loader: Any) -> Any:
    """A plain map-style torch DataLoader -> the same loader as a :class:`ResumableDataLoader`.

    Anything else (already stateful, iterable datasets, custom batch samplers) is returned unchanged.
    """
    global _RESUMABLE
    from torch.utils.data import BatchSampler, DataLoader, IterableDataset, RandomSampler, SequentialSampler

    if _RESUMABLE is None:
        _RESUMABLE = _resumable_loader_class()
    if type(loader) is not DataLoader or isinstance(loader.dataset, IterableDataset):
        return loader
    if type(loader.batch_sampler) is not BatchSampler:
        return loader
    kwargs: dict[str, Any] = {
        "batch_size": loader.batch_size,
        "drop_last": loader.drop_last,
        "num_workers": loader.num_workers,
        "collate_fn": loader.collate_fn,
        "pin_memory": loader.pin_memory,
        "timeout": loader.timeout,
        "worker_init_fn": loader.worker_init_fn,
        "persistent_workers": loader.persistent_workers,
    }
    if loader.num_workers > 0:
        kwargs["prefetch_factor"] = loader.prefetch_factor
    sampler = loader.sampler
    if type(sampler) is RandomSampler and not sampler.replacement and sampler._num_samples is None:
        kwargs.update(shuffle=True, generator=sampler.generator)
    elif type(sampler) is SequentialSampler:
        kwargs["shuffle"] = False
    else:
        kwargs["sampler"] = sampler
    return _RESUMABLE(loader.dataset, **kwargs)


# ---------------------------------------------------------------------------------------------- misc
def peak_memory_mb(device: Any = None) -> tuple[float, str]:
    """(peak MB, kind): CUDA max allocated on a GPU, else the process's peak resident set size."""
    import torch

    dev = torch.device(device) if device is not None else None
    if dev is not None and dev.type == "cuda" and torch.cuda.is_available():
        return torch.cuda.max_memory_allocated(dev) / 2**20, "cuda_max_allocated"
    rss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    scale = 1 / 2**20 if sys.platform == "darwin" else 1 / 1024  # bytes on macOS, KiB on Linux
    return rss_kb * scale, "cpu_peak_rss"


def global_rank() -> int:
    """This process's rank before any process group exists (Lightning / torchrun / SLURM variables)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)
