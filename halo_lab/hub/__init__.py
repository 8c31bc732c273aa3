"""The Hugging Face Hub layout of a halo_lab model: ``folder`` (save_for_hub / load_from_hub / push_to_hub),
``hf_files`` (what transformers reads in an export: remote code + ``auto_map``, tokenizer files, the
generation config, the model card), ``hf_remote/`` (the remote code itself, copied into every export and
importing no halo_lab module), ``errors`` (why a push or a Hub download failed, in one line, for every
huggingface_hub version). Reading checkpoint files is ``halo_lab.checkpoint``, below the model."""

from halo_lab.hub.errors import HubPushError
from halo_lab.hub.folder import (
    CONFIG_NAME,
    MODEL_CARD_NAME,
    PT_WEIGHTS_NAME,
    SAFE_WEIGHTS_NAME,
    CheckpointMismatchError,
    describe_tokenizer,
    load_from_hub,
    push_to_hub,
    save_for_hub,
    unwrap_model,
    upload_dir,
)

__all__ = [
    "CONFIG_NAME",
    "MODEL_CARD_NAME",
    "PT_WEIGHTS_NAME",
    "SAFE_WEIGHTS_NAME",
    "CheckpointMismatchError",
    "HubPushError",
    "describe_tokenizer",
    "load_from_hub",
    "push_to_hub",
    "save_for_hub",
    "unwrap_model",
    "upload_dir",
]
