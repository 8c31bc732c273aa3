"""HaloLitModule: the LightningModule that trains HaloSModel / BaselineModel.

Hyperparameters are plain containers only (torch >= 2.6 loads checkpoints with ``weights_only=True``,
which refuses OmegaConf objects): ``model_config`` (HaloConfig.to_dict()), ``arch``,
the optimizer/scheduler configs as ``_target_`` dicts and the tokenizer description, so a ``.ckpt`` loads
with ``torch.load(weights_only=True)`` and ``HaloLitModule.load_from_checkpoint(path)`` (or the hub
loader) rebuilds the model from it alone.
"""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

import lightning.pytorch as pl
import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR
from torchmetrics import CatMetric, SumMetric

try:  # Lightning's classmethod that refuses a call on an instance (the result would be dropped)
    from lightning.pytorch.utilities.model_helpers import _restricted_classmethod
except ImportError:  # pragma: no cover - other Lightning releases
    _restricted_classmethod = classmethod

LN2 = math.log(2.0)
log = logging.getLogger("halo_lab.train")


# ---------------------------------------------------------------------------------------------- optimisation
def _lr_factor(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float) -> float:
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    if total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / (total_steps - warmup_steps))
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine_schedule(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.1
) -> LambdaLR:
    """Linear warmup over ``warmup_steps`` optimizer steps, then cosine decay to ``min_lr_ratio * lr`` at
    ``total_steps`` (held there after). A picklable partial keeps the scheduler's state_dict plain."""
    fn = partial(
        _lr_factor,
        warmup_steps=int(warmup_steps),
        total_steps=int(total_steps),
        min_lr_ratio=float(min_lr_ratio),
    )
    return LambdaLR(optimizer, fn)


# the content selection's learned logit biases per KV head (model/network.py): scalars that must travel
# from their starts (-4, -2) while Adam moves a parameter about lr a step
SELECT_BIASES = ("select_bias", "select_token_bias")


def check_warmup_strategy(hparams: Any, strategy: Any) -> None:
    """A ConfigError before training when the dense warm-up of a selecting model runs under DDP without
    ``find_unused_parameters``: the selection's parameters (pooling, biases) get no gradient while the
    attention is dense, and DDP's reducer would stop at the first step's backward."""
    warmup = hparams.get("select_dense_warmup", 0)
    ddp = getattr(strategy, "_ddp_kwargs", None)
    if (
        not warmup
        or ddp is None
        or ddp.get("find_unused_parameters")
        or not hparams["model_config"].get("select_blocks")
    ):
        return
    from halo_lab.runner.config import ConfigError

    raise ConfigError(
        f"module.select_dense_warmup={warmup}: under DDP the selection's parameters get no gradient while the "
        "attention is dense; set trainer.strategy.find_unused_parameters=true"
    )


def param_groups(
    model: nn.Module,
    weight_decay: float | None = None,
    lr: float | None = None,
    select_bias_lr_scale: float = 1.0,
) -> list[dict[str, Any]]:
    """Two AdamW groups: decay for weight matrices; none for norms, biases, embeddings and global memory.

    Tied parameters are listed once. The decay group keeps the optimizer's weight_decay unless one is given.
    With ``select_bias_lr_scale`` != 1 a third group holds the selection's biases (``SELECT_BIASES``), no
    decay, at ``lr * select_bias_lr_scale`` (``lr``: the optimizer's); at 1 the groups stay two, so older
    checkpoints' optimizer states still load.
    """
    no_decay: set[int] = set()
    for module in model.modules():
        if isinstance(module, nn.Embedding):
            no_decay.add(id(module.weight))
    scaled = select_bias_lr_scale != 1.0
    decay_params, no_decay_params, bias_params, seen = [], [], [], set()
    for name, p in model.named_parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        if scaled and name.split(".")[-1] in SELECT_BIASES:
            bias_params.append(p)
        elif p.ndim < 2 or id(p) in no_decay or name.split(".")[-1] == "global_memory":
            no_decay_params.append(p)
        else:
            decay_params.append(p)
    decay_group: dict[str, Any] = {"params": decay_params}
    if weight_decay is not None:
        decay_group["weight_decay"] = weight_decay
    groups = [decay_group, {"params": no_decay_params, "weight_decay": 0.0}]
    if scaled:
        bias_lr = float(lr if lr is not None else 1e-3) * select_bias_lr_scale  # 1e-3: AdamW's default
        groups.append({"params": bias_params, "weight_decay": 0.0, "lr": bias_lr})
    return groups


# ---------------------------------------------------------------------------------------------- module
class HaloLitModule(pl.LightningModule):
    """Next-token language modelling for HALO-S and its dense baseline.

    The model is built in :meth:`configure_model` once the data's vocabulary is known (Lightning calls it
    after ``prepare_data`` on rank 0 and ``setup`` on every rank, so DDP/torchrun ranks never race on data
    preparation, and FSDP can build it sharded). With a known ``vocab_size`` it is built at once.

    Batches are ``(input_ids, targets)`` or ``(input_ids, targets, distance)``: validation then reports
    answer accuracy (``val/acc``) and accuracy by distance (``val/acc@D``). ``distance`` ``[B]`` (needle):
    one answer per example, right when every scored token is; ``[B, Q]`` (mqar): Q queries per example,
    each right when all of its scored tokens are (:func:`~halo_lab.data.synthetic.query_correct`), and the
    accuracies count queries. Targets of -100 are not scored.
    """

    def __init__(
        self,
        model_config: dict[str, Any],
        arch: str = "halo",
        optimizer: dict[str, Any] | None = None,
        scheduler: dict[str, Any] | None = None,
        gradient_checkpointing: bool = False,
        device_profile: dict[str, Any] | None = None,
        tokenizer: dict[str, Any] | None = None,
        select_bias_lr_scale: float = 1.0,
        select_routing_loss: float = 0.0,
        select_routing_queries: int = 64,
        select_dense_warmup: int = 0,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.model: nn.Module | None = None
        self.tokenizer = None  # the live tokenizer object (set by the runner or rebuilt from hparams)
        self.val_ce = SumMetric()
        self.val_tokens = SumMetric()
        self.val_distance = CatMetric()
        self.val_correct = CatMetric()
        self.val_first = CatMetric()  # mqar: the first query of each example (val/acc_first_query)
        self.last_val: dict[str, Any] = {}
        if model_config.get("vocab_size"):
            self._build_model()

    @_restricted_classmethod
    def load_from_checkpoint(
        cls, checkpoint_path, map_location=None, hparams_file=None, strict=None, **kwargs
    ):
        """Lightning's loader, always with ``weights_only=True`` (a ``weights_only`` argument is ignored):
        neither ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` nor a caller can make a checkpoint run code."""
        kwargs.pop("weights_only", None)
        return super().load_from_checkpoint(
            checkpoint_path, map_location, hparams_file, strict, weights_only=True, **kwargs
        )

    # ------------------------------------------------------------------ model
    def _build_model(self) -> None:
        from halo_lab.model import build_model

        self.model = build_model(dict(self.hparams.model_config), arch=self.hparams.arch)
        # The checkpoint's model_config is the model's own (validated, defaults filled): plain dict.
        self.hparams.model_config = self.model.config.to_dict()
        if self.hparams.gradient_checkpointing:
            self.model.enable_gradient_checkpointing()
        if self.hparams.get("select_routing_loss", 0.0) > 0:  # absent from older checkpoints
            self.model.set_routing_queries(self.hparams.select_routing_queries)

    def configure_model(self) -> None:
        trainer = self._trainer
        dm = getattr(trainer, "datamodule", None) if trainer is not None else None
        vocab = getattr(dm, "vocab_size", None)
        configured = self.hparams.model_config.get("vocab_size")
        # Checked whether the model was built early (model.vocab_size given) or is built now: a vocabulary
        # larger than the embedding fails later as an IndexError inside the embedding lookup.
        if configured is not None and vocab is not None and configured < vocab:
            from halo_lab.runner.config import ConfigError

            raise ConfigError(
                f"model.vocab_size={configured}: smaller than the data's vocabulary ({vocab} token ids); set "
                f"model.vocab_size=null to follow the data, or at least {vocab}"
            )
        check_warmup_strategy(self.hparams, getattr(trainer, "strategy", None))
        tok = getattr(dm, "tokenizer", None)
        if tok is not None:  # the checkpoint (and the hub export) records what the ids mean
            self.tokenizer = tok
            if hasattr(tok, "to_dict"):
                self.hparams.tokenizer = tok.to_dict()
        if self.model is not None:
            return
        if vocab is None:
            raise RuntimeError(
                "HaloLitModule: model.vocab_size is null and no datamodule vocabulary is available; "
                "set model.vocab_size or train with a datamodule that has .vocab_size"
            )
        self.hparams.model_config = {**self.hparams.model_config, "vocab_size": configured or int(vocab)}
        self._build_model()
        if self.hparams.device_profile and trainer is not None:
            from halo_lab.device import optimize_for_device

            # Flags (TF32, SDPA kernels) and an in-place compile when the profile asks for one; Lightning
            # moves the model itself. Never raises.
            optimize_for_device(
                self.model,
                device=trainer.strategy.root_device,
                mode="training",
                profile=self.hparams.device_profile,
                move=False,
            )

    def get_tokenizer(self):
        """The tokenizer: the live one, else rebuilt from the saved description (None if unknown)."""
        if self.tokenizer is None and self.hparams.get("tokenizer"):
            from halo_lab.tokenizers import tokenizer_from_dict

            self.tokenizer = tokenizer_from_dict(self.hparams.tokenizer)
        return self.tokenizer

    def forward(self, input_ids: torch.Tensor, targets: torch.Tensor | None = None):
        return self.model(input_ids, targets)

    # ------------------------------------------------------------------ steps
    @staticmethod
    def _split(batch):
        if isinstance(batch, dict):
            return batch["input_ids"], batch["targets"], batch.get("distance")
        input_ids, targets = batch[0], batch[1]
        distance = batch[2] if len(batch) > 2 else None
        return input_ids, targets, distance

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        # The random graph edges are a function of the global step: identical on every DDP rank, and a
        # resumed run continues the same sequence.
        self.model.set_graph_step(self.global_step)
        warmup = self.hparams.get("select_dense_warmup", 0)  # absent from older checkpoints
        if warmup:  # HALO-S's training forwards dense for the first steps (a resumed run: by its step)
            self.model.set_dense_warmup(self.global_step < warmup)

    def training_step(self, batch, batch_idx: int) -> torch.Tensor:
        input_ids, targets, _ = self._split(batch)
        _, loss = self.model(input_ids, targets)
        routing = self.model.routing_loss() if self.hparams.get("select_routing_loss", 0.0) > 0 else None
        check = loss.detach() if routing is None else (loss + routing).detach()
        if self.trainer.world_size > 1:
            # Every rank must stop together, not hang in the next all-reduce.
            check = self.trainer.strategy.reduce(check, reduce_op="mean")
        if not torch.isfinite(check):
            raise FloatingPointError(
                f"the loss diverged: non-finite training loss ({check.item()}) at step {self.global_step} "
                f"(batch {batch_idx}); {self._divergence_advice()}"
            )
        loss_f = loss.detach().float()
        self.log("train/loss", loss_f, on_step=True, prog_bar=True)
        # Per-batch perplexity / bits from this batch's token-weighted mean CE (never an average of exp).
        self.log("train/ppl", torch.exp(loss_f), on_step=True)
        self.log("train/bpt", loss_f / LN2, on_step=True)
        # Not LearningRateMonitor: it refuses to run without a logger (logger=none is an option) and
        # names the value per parameter group; history.jsonl and the progress lines read train/lr.
        opt = self.optimizers(use_pl_optimizer=False) if self._trainer is not None else None
        if opt is not None:
            self.log("train/lr", opt.param_groups[0]["lr"], on_step=True)
        if routing is not None:  # train/loss stays the cross-entropy; what trains is both
            self.log("train/routing_loss", routing.detach().float(), on_step=True)
            return loss + self.hparams.select_routing_loss * routing
        return loss

    def _divergence_advice(self) -> str:
        """What to try after a non-finite loss: a lower learning rate (naming the configured one), the
        data, and full precision when the run is not in it already."""
        lr = (self.hparams.optimizer or {}).get("lr")
        advice = [f"lower optimizer.lr (now {lr:g})" if isinstance(lr, int | float) else "lower optimizer.lr"]
        advice.append("check the data")
        precision = str(getattr(self._trainer, "precision", "32") if self._trainer is not None else "32")
        if not precision.startswith(("32", "64")):
            advice.append(f"use device.precision=32 (now {precision})")
        return ", ".join(advice[:-1]) + " or " + advice[-1]

    def validation_step(self, batch, batch_idx: int) -> None:
        input_ids, targets, distance = self._split(batch)
        logits, loss = self.model(input_ids, targets)
        mask = targets != -100
        n = mask.sum().float()
        # loss is the batch's mean CE (NaN when nothing is scored): back to a sum, without a host sync.
        self.val_ce.update(torch.where(n > 0, loss.detach().float() * n, torch.zeros_like(n)))
        self.val_tokens.update(n)
        if distance is not None:
            from halo_lab.data.synthetic import answer_correct, query_correct

            # Correct = argmax right at every scored (answer) position; the data module's definition.
            if distance.dim() == 2:  # one distance per query: per-query correctness
                correct = query_correct(logits, targets, distance.shape[1])
                self.val_first.update(correct[:, 0].float())
            else:
                correct = answer_correct(logits, targets)
            self.val_distance.update(distance.reshape(-1).float())
            self.val_correct.update(correct.reshape(-1).float())

    def on_validation_epoch_end(self) -> None:
        tokens = self.val_tokens.compute()
        results: dict[str, Any] = {}
        if tokens > 0:
            val_loss = self.val_ce.compute() / tokens
            results = {"val/loss": val_loss, "val/ppl": torch.exp(val_loss), "val/bpt": val_loss / LN2}
            for k, v in results.items():
                # compute() already reduced over ranks: every rank logs the same value.
                self.log(k, v, prog_bar=k == "val/loss", sync_dist=True)
        self.val_ce.reset()
        self.val_tokens.reset()
        by_distance: dict[int, float] = {}
        if self.val_distance.update_count > 0:
            dist = self.val_distance.compute()
            correct = self.val_correct.compute()
            if isinstance(dist, torch.Tensor) and dist.numel():
                dist, correct = dist.reshape(-1), correct.reshape(-1)
                main = dist >= 0  # negative labels: controls (synthetic.CONTROL), reported apart
                extra = {"val/acc_control": correct[~main]} if bool((~main).any()) else {}
                if self.val_first.update_count > 0:
                    extra["val/acc_first_query"] = self.val_first.compute()
                for k, v in {"val/acc": correct[main], **extra}.items():
                    results[k] = v.float().mean()
                    self.log(k, results[k], sync_dist=True)
                dist, correct = dist[main], correct[main]
                for d in torch.unique(dist).tolist():
                    acc = correct[dist == d].mean()
                    by_distance[int(d)] = float(acc)
                    self.log(f"val/acc@{int(d)}", acc, sync_dist=True)
        self.val_distance.reset()
        self.val_correct.reset()
        self.val_first.reset()
        self.last_val = {k: float(v) for k, v in results.items()}
        if by_distance:
            self.last_val["val/acc_by_distance"] = by_distance

    # ------------------------------------------------------------------ optimisers
    def configure_optimizers(self):
        from hydra.utils import instantiate

        opt_cfg = dict(
            self.hparams.optimizer or {"_target_": "torch.optim.AdamW", "_partial_": True, "lr": 3e-4}
        )
        wd = opt_cfg.get("weight_decay")
        scale = float(self.hparams.get("select_bias_lr_scale", 1.0))  # absent from older checkpoints
        groups = param_groups(self.model, wd, opt_cfg.get("lr"), scale)
        opt_cfg["_partial_"] = True
        optimizer = instantiate(opt_cfg, _convert_="all")(groups)
        if not self.hparams.scheduler:
            return optimizer
        sch_cfg = dict(self.hparams.scheduler)
        if sch_cfg.get("total_steps") in (None, -1):
            sch_cfg["total_steps"] = int(self.trainer.estimated_stepping_batches)
        sch_cfg["_partial_"] = True
        scheduler = instantiate(sch_cfg, _convert_="all")(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }


# ---------------------------------------------------------------------------------------------- summary
class ParameterSummary(pl.Callback):
    """One log line when fit starts: the network's parameters, in all and by top-level part
    (``model: HaloSModel, 4.07M parameters (all trainable, 16.3 MB): embed 32.8K, blocks 3.97M, ...``).

    Instead of Lightning's ModelSummary table (``trainer.enable_model_summary: false`` in conf/trainer),
    which lists the validation metric modules (0 parameters each) as rows and a FLOPs column it cannot
    fill without an example input ("Total FLOPs: 0")."""

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        model = getattr(pl_module, "model", None)
        if not trainer.is_global_zero or model is None:
            return
        seen: set[int] = set()
        parts = []
        own = [(name, [p]) for name, p in model.named_parameters(recurse=False)]  # e.g. global_memory
        for name, params in [*((n, c.parameters()) for n, c in model.named_children()), *own]:
            n = _count_new(params, seen)  # a tied weight counts once, in the first part holding it
            if n:
                parts.append(f"{name} {_count(n)}")
        every = {id(p): p for p in model.parameters()}.values()
        total = sum(p.numel() for p in every)
        frozen = sum(p.numel() for p in every if not p.requires_grad)
        size_mb = sum(p.numel() * p.element_size() for p in every) / 1e6
        trainable = f"{_count(frozen)} frozen" if frozen else "all trainable"
        log.info(
            "model: %s, %s parameters (%s, %.1f MB): %s",
            type(model).__name__,
            _count(total),
            trainable,
            size_mb,
            ", ".join(parts),
        )


def _count_new(params: Any, seen: set[int]) -> int:
    n = 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            n += p.numel()
    return n


def _count(n: int) -> str:
    for unit, scale in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g}{unit}"
    return str(n)
