"""Config options registered from a table instead of a file (``ConfigStore``): ``model=NAME`` from the
presets of ``halo_lab.config.PRESETS`` (the one table of sizes) and ``device=NAME`` from the device
profile table; Hydra lists them with the file options (``--help``, tab completion). The entry points and
``runner.config.compose_config`` call :func:`register_options` before composing.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from halo_lab.config import HaloConfig


def register_device_options() -> None:
    """``device=h100`` etc. without a file per card: one ConfigStore entry per row of the profile table
    (``halo_lab.device.PROFILES``), each with the override keys of ``conf/device/auto.yaml`` as null."""
    from hydra.core.config_store import ConfigStore

    from halo_lab.device import OVERRIDABLE_KEYS, PROFILES

    store = ConfigStore.instance()
    for name in PROFILES:
        store.store(group="device", name=name, node={"name": name, **dict.fromkeys(OVERRIDABLE_KEYS)})


# The keys of a model option: every HaloConfig field, so that any of them is a plain override
# (``model.select_blocks=2``), in the order the dataclass declares them. ``allow_full_window`` stays out so
# that build_model_config can set it for the dense twin.
MODEL_NODE_KEYS = tuple(f.name for f in dataclasses.fields(HaloConfig) if f.name != "allow_full_window")

# Model options that were removed, each the one key of its node: the one-line ConfigError naming the
# way to say it now (build_model_config raises it).
MOVED_KEY = "_moved_"
_MOVED_MODEL_OPTIONS = {
    f"dense_{size}": f"no longer a model option; the dense twin is picked with variant=dense: model=halo_{size} "
    "variant=dense"
    for size in ("tiny", "small", "medium")
}


def model_option(name: str) -> dict[str, Any]:
    """The ``model=NAME`` node of a preset: ``HaloConfig.from_name(NAME)``'s values of
    :data:`MODEL_NODE_KEYS`, with ``vocab_size`` null (it follows the data's tokenizer)."""
    preset = HaloConfig.from_name(name).to_dict()
    return {key: None if key == "vocab_size" else preset[key] for key in MODEL_NODE_KEYS}


def register_model_options() -> None:
    """``model=halo_small`` etc. without a file per size: one ConfigStore entry per preset of
    ``halo_lab.config.PRESETS`` (the one table of sizes, also ``HaloConfig.from_name``), plus the removed
    ``dense_*`` options, which fail with a line naming ``variant=dense``."""
    from hydra.core.config_store import ConfigStore

    from halo_lab.config import PRESETS

    store = ConfigStore.instance()
    for name in PRESETS:
        store.store(group="model", name=name, node=model_option(name))
    for name, moved in _MOVED_MODEL_OPTIONS.items():
        store.store(group="model", name=name, node={MOVED_KEY: moved})


def register_options() -> None:
    """Every config option registered from a table instead of a file: ``model=`` and ``device=``."""
    register_model_options()
    register_device_options()
