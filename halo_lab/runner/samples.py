"""Sample text from the model being trained: :func:`generate_sample` (also the end-of-run sample) and
:class:`SampleGeneration` (every N steps: a W&B table, else the log and samples.txt)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.loggers import WandbLogger

log = logging.getLogger("halo_lab.train")


def generate_sample(
    model: torch.nn.Module,
    tokenizer: Any,
    prompt: str | torch.Tensor,
    max_new_tokens: int = 120,
    temperature: float = 0.8,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
) -> tuple[str, str]:
    """(prompt text, continuation text) from ``halo_lab.generation.generate``; max_new_tokens shrinks to fit
    max_seq_len."""
    from halo_lab.generation import generate

    device = next(model.parameters()).device
    ids = (
        prompt
        if isinstance(prompt, torch.Tensor)
        else torch.tensor(tokenizer.encode(prompt), dtype=torch.long)
    )
    ids = ids.reshape(-1).to(device)
    if ids.numel() == 0:
        ids = torch.tensor([getattr(tokenizer, "eos_token_id", 0) or 0], dtype=torch.long, device=device)
    room = model.config.max_seq_len - ids.numel()
    n_new = max(0, min(max_new_tokens, room))
    gen = torch.Generator(device=device).manual_seed(seed)
    out = generate(
        model,
        ids,
        None,
        max_new_tokens=n_new,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        generator=gen,
    )
    prompt_ids = ids.tolist()
    new_ids = out.reshape(-1).tolist()[len(prompt_ids) :]
    return tokenizer.decode(prompt_ids), tokenizer.decode(new_ids)


class SampleGeneration(pl.Callback):
    """Generates a sample every ``every_n_steps`` optimizer steps (and at the end of training) on rank 0.

    ``prompt`` null takes the first ``prompt_tokens`` tokens of the first validation sequence, which
    suits any dataset and tokenizer. With a WandbLogger the samples accumulate in a W&B table
    ``samples``; otherwise they go to the log. They are always appended to ``path`` when given.
    Skipped under FSDP (parameters are sharded across ranks).
    """

    def __init__(
        self,
        every_n_steps: int = 200,
        prompt: str | None = None,
        prompt_tokens: int = 32,
        max_new_tokens: int = 120,
        temperature: float = 0.8,
        top_k: int = 0,
        top_p: float = 1.0,
        path: str | None = None,
        on_train_end: bool = True,
    ):
        if every_n_steps < 0:
            raise ValueError(
                f"callbacks.samples.every_n_steps={every_n_steps}: must be >= 0 (0 = only at the end)"
            )
        self.every_n_steps = every_n_steps
        self.prompt = prompt
        self.prompt_tokens = prompt_tokens
        self.kw = {
            "max_new_tokens": max_new_tokens,
            "temperature": temperature,
            "top_k": top_k,
            "top_p": top_p,
        }
        self.path = Path(path) if path else None
        self.at_end = on_train_end
        self._val_prompt: torch.Tensor | None = None
        self._from_train = False
        self.rows: list[list[Any]] = []
        self._last_step = -1

    def on_validation_batch_end(
        self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0
    ) -> None:
        if (self._val_prompt is None or self._from_train) and batch_idx == 0:
            self._from_train = False
            x = batch["input_ids"] if isinstance(batch, dict) else batch[0]
            self._val_prompt = x[0, : self.prompt_tokens].detach().cpu()

    def get_prompt(self) -> str | torch.Tensor | None:
        return self.prompt if self.prompt is not None else self._val_prompt

    def _skip(self, trainer: pl.Trainer) -> bool:
        from lightning.pytorch.strategies import FSDPStrategy

        return isinstance(trainer.strategy, FSDPStrategy)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        step = trainer.global_step
        if self.every_n_steps and step % self.every_n_steps == 0 and step != self._last_step:
            if self.prompt is None and self._val_prompt is None:  # no validation yet: a training prefix
                x = batch["input_ids"] if isinstance(batch, dict) else batch[0]
                self._val_prompt = x[0, : self.prompt_tokens].detach().cpu()
                self._from_train = True
            self.sample(trainer, pl_module)

    def on_train_end(self, trainer, pl_module) -> None:
        if self.at_end and trainer.global_step != self._last_step:
            self.sample(trainer, pl_module)

    def sample(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_step = trainer.global_step
        if not trainer.is_global_zero or self._skip(trainer):
            return
        tokenizer = pl_module.get_tokenizer() if hasattr(pl_module, "get_tokenizer") else None
        prompt = self.get_prompt()
        if tokenizer is None or prompt is None or pl_module.model is None:
            return
        try:
            p, text = generate_sample(pl_module.model, tokenizer, prompt, seed=trainer.global_step, **self.kw)
        except Exception as exc:  # a sample must never stop training
            log.warning("sample generation failed at step %d: %s", trainer.global_step, exc)
            return
        self.rows.append([trainer.global_step, p, text])
        wandb_loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
        for lg in wandb_loggers:
            lg.log_text(
                key="samples", columns=["step", "prompt", "sample"], data=self.rows, step=trainer.global_step
            )
        if not wandb_loggers:
            log.info("sample at step %d:\n%s|%s", trainer.global_step, p, text)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self.path.open("a", encoding="utf-8") as f:
                f.write(f"=== step {trainer.global_step} ===\n{p}|{text}\n\n")
