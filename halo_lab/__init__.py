"""halo_lab: HALO-S sparse-attention language models, with a Hydra + Lightning experiment runner."""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names -> defining module. Imported lazily so that `import halo_lab` stays light and the model
# can be used from plain PyTorch without loading Lightning or Hydra.
_PUBLIC = {
    "HaloConfig": "halo_lab.config",
    "HaloSModel": "halo_lab.model",
    "BaselineModel": "halo_lab.model",
    "build_model": "halo_lab.model",
    "set_seed": "halo_lab.utils",
    "count_parameters": "halo_lab.utils",
    "CharacterTokenizer": "halo_lab.tokenizers",
    "WordTokenizer": "halo_lab.tokenizers",
    "TiktokenTokenizer": "halo_lab.tokenizers",
    "save_for_hub": "halo_lab.hub",
    "load_from_hub": "halo_lab.hub",
    "push_to_hub": "halo_lab.hub",
    "optimize_for_device": "halo_lab.device",
    "detect_device_profile": "halo_lab.device",
    "get_optimal_batch_size": "halo_lab.device",
    "get_optimal_device": "halo_lab.device",
    "device_info": "halo_lab.device",
    "benchmark_speed": "halo_lab.bench.train_step",
    "benchmark_generation": "halo_lab.bench.decode_speed",
    "estimate_flops": "halo_lab.bench.train_step",
    # the reference package's helpers (halo_lab.api; its free generate() is halo_lab.api.generate)
    "estimate_graph_stats": "halo_lab.api",
    "estimate_memory": "halo_lab.api",
}

__all__ = sorted(_PUBLIC) + ["__version__"]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'halo_lab' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
