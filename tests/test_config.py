"""Config composition: every option of every group composes and instantiates; bad values fail fast."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import ConfigCompositionException, MissingConfigException
from hydra.utils import instantiate
from omegaconf import OmegaConf

from halo_lab.runner.config import (
    ConfigError,
    ablation_name,
    build_model_config,
    compose_config,
    conf_dir,
    to_plain,
    validate_config,
)

CONF = conf_dir()
GROUPS = ("model", "ablation", "data", "device", "trainer", "logger", "callbacks", "paths", "hydra")
NEEDS_PATH = {"text", "jsonl", "streaming"}


def options(group: str) -> list[str]:
    names = {p.stem for p in (CONF / group).glob("*.yaml")}
    if group == "device":  # one option per row of the profile table (registered, no file per card)
        from halo_lab.device import PROFILES

        names |= set(PROFILES)
    if group == "model":  # one option per preset of HaloConfig's table (registered, no file per size)
        from halo_lab.config import PRESETS

        names |= set(PRESETS)
    return sorted(names)


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture
def corpus(tmp_path) -> Path:
    p = tmp_path / "corpus.txt"
    p.write_text("\n".join(f"line {i} of a small test corpus, words words words." for i in range(400)))
    j = tmp_path / "docs.jsonl"
    j.write_text("\n".join(json.dumps({"text": f"document {i} has some text in it"}) for i in range(200)))
    return tmp_path


def compose(overrides, tmp_path):
    return compose_config(overrides, output_dir=tmp_path / "run")


def test_groups_exist_and_experiment_stays_out_of_the_root_defaults():
    for g in GROUPS:
        assert options(g), f"conf/{g}/ has no options"
    root = OmegaConf.load(CONF / "train.yaml")
    entries = [next(iter(d)) if isinstance(d, dict) else d for d in root.defaults]
    assert not any("experiment" in str(e) for e in entries), (
        "`+experiment=NAME` needs experiment out of defaults"
    )
    assert set(options("model")) >= {
        "halo_tiny",
        "halo_small",
        "halo_medium",
        "halo_large",
        "halo_xl",
        "halo_long_ctx",
    }
    assert set(options("ablation")) == {"full", "no_globals", "no_dilated", "no_random", "local_only"}
    assert set(options("data")) >= {"shakespeare", "text", "jsonl", "streaming", "copy", "needle", "mqar"}
    assert set(options("trainer")) >= {"default", "debug", "ddp", "fsdp"}
    assert set(options("logger")) >= {"wandb", "csv", "none"}


def test_default_config(tmp_path):
    cfg = compose([], tmp_path)
    assert cfg.data.dataset == "shakespeare" and cfg.data.tokenizer == "char"
    assert cfg.module.arch == "halo" and cfg.logger.wandb.mode is None
    assert cfg.paths.output_dir == str((tmp_path / "run").resolve())
    # Everything a run writes is inside its run directory (version_base 1.3 keeps the working directory,
    # so nothing may rely on Hydra changing into the run directory).
    for key in ("trainer.default_root_dir", "logger.wandb.save_dir", "callbacks.last_checkpoint.dirpath"):
        assert str(OmegaConf.select(cfg, key)).startswith(cfg.paths.output_dir), key
    assert cfg.hydra.run.dir.startswith(cfg.paths.log_dir + "/train/")
    assert cfg.hydra.sweep.dir.startswith(cfg.paths.log_dir + "/multirun/train/")
    assert cfg.hydra.job.chdir is False


@pytest.mark.parametrize("option", options("model"))
def test_model_options_build(option, tmp_path):
    cfg = compose([f"model={option}"], tmp_path)
    checked = validate_config(cfg)
    mc = dict(checked["model_config"], vocab_size=256)
    from halo_lab.model import build_model

    with torch.device("meta"):  # the big ones cost no memory on the meta device
        model = build_model(mc, arch=checked["arch"])
    assert model.arch == checked["arch"] == cfg.module.arch
    assert model.config.hidden_size == cfg.model.hidden_size


def test_dense_twin_matches_halo_option(tmp_path):
    """variant=dense is the one way to the dense twin: the same model node, only module.arch differs."""
    a = compose(["model=halo_small", "variant=dense"], tmp_path)
    b = compose(["model=halo_small"], tmp_path)
    assert to_plain(a.model) == to_plain(b.model) and to_plain(a.module) == {
        **to_plain(b.module),
        "arch": "dense",
    }
    assert a.module.arch == "dense" and validate_config(a)["arch"] == "dense"


@pytest.mark.parametrize(
    ("overrides", "says"),
    [
        (["model=dense_small"], "model=dense_small: .* model=halo_small variant=dense$"),
        (["model=dense_tiny"], "model=dense_tiny: .* model=halo_tiny variant=dense$"),
        (["model=halo_small", "module.arch=dense"], r"module\.arch=dense: .* variant=dense$"),
        (["+experiment=baseline_cpu", "module.arch=halo"], r"module\.arch=halo: .* variant=halo$"),
    ],
)
def test_the_other_ways_to_say_dense_fail_naming_variant(overrides, says, tmp_path):
    cfg = compose(overrides, tmp_path)
    with pytest.raises(ConfigError, match=says) as err:
        validate_config(cfg)
    assert "\n" not in str(err.value)  # one line


def test_model_options_are_not_files():
    """The presets are registered from HaloConfig's table: no YAML duplicates their values."""
    assert not list((CONF / "model").glob("*.yaml"))


def test_registered_options_are_listed_like_files():
    """Hydra lists the registered model= and device= options with the file ones (--help, tab completion)."""
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from halo_lab.config import PRESETS
    from halo_lab.device import PROFILES
    from halo_lab.runner.options import register_options

    register_options()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        assert set(loader.get_group_options("model")) >= set(PRESETS)
        assert set(loader.get_group_options("device")) >= set(PROFILES) | {"auto"}


@pytest.mark.parametrize("option", [o for o in options("model") if o.startswith("halo_")])
def test_model_options_are_the_haloconfig_presets(option, tmp_path):
    """model=<name> holds HaloConfig fields only, the values of HaloConfig.from_name(<name>)."""
    from halo_lab.config import HaloConfig

    values = to_plain(compose([f"model={option}"], tmp_path).model)
    preset = HaloConfig.from_name(option).to_dict()
    assert set(values) <= set(preset), f"not HaloConfig fields: {set(values) - set(preset)}"
    assert values.pop("vocab_size") is None  # follows the data
    assert values == {k: preset[k] for k in values}
    defaults = HaloConfig().to_dict()
    changed = {k for k in preset if preset[k] != defaults[k]}
    assert changed <= set(values), f"the file misses preset values {changed - set(values)}"


@pytest.mark.parametrize("option", options("ablation"))
def test_ablation_options(option, tmp_path):
    cfg = compose([f"ablation={option}"], tmp_path)
    mc, _, _ = build_model_config(cfg)
    full, _, _ = build_model_config(compose([], tmp_path))
    expect = {
        "full": {},
        "no_globals": {"num_globals": 0},
        "no_dilated": {"dilated_offsets": []},
        "no_random": {"num_random": 0},
        "local_only": {"num_globals": 0, "dilated_offsets": [], "num_random": 0},
    }[option]
    assert ablation_name(cfg) == option
    assert {k: v for k, v in mc.items() if full[k] != v} == expect
    # An ablation is a partial override of the model node (# @package model): a key given on the
    # command line is applied after it, so what is typed is what runs.
    if option == "no_globals":
        mc2, _, _ = build_model_config(compose(["ablation=no_globals", "model.num_globals=4"], tmp_path))
        assert mc2["num_globals"] == 4
        assert (CONF / "ablation" / f"{option}.yaml").read_text().startswith("# @package model\n")


@pytest.mark.parametrize("option", options("data"))
def test_data_options_instantiate(option, tmp_path, corpus):
    extra = []
    if option in NEEDS_PATH:
        extra = [f"data.path={corpus / ('docs.jsonl' if option == 'jsonl' else 'corpus.txt')}"]
    if option in ("jsonl", "streaming"):
        extra.append("data.tokenizer=char")  # tiktoken works too, but char needs no encoding files
    cfg = compose([f"data={option}", *extra], tmp_path)
    validate_config(cfg)
    d = to_plain(cfg.data)
    d["batch_size"] = d["batch_size"] or 4
    dm = instantiate(d, _convert_="all")  # the constructor reads no data
    assert dm.seq_len == cfg.data.seq_len
    assert not (Path(cfg.data.data_dir) / "cache").exists()


@pytest.mark.parametrize("option", options("device"))
def test_device_options_resolve(option, tmp_path, monkeypatch):
    # Every profile resolves, whatever this machine has (validate_config refuses a GPU profile without one).
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    cfg = compose([f"device={option}"], tmp_path)
    dev = validate_config(cfg)["device"]
    assert dev["precision"] and dev["batch_size"] >= 1


@pytest.mark.parametrize("option", options("trainer"))
def test_trainer_options_instantiate(option, tmp_path):
    from halo_lab.runner.checkpointing import AtomicCheckpointIO

    cfg = compose([f"trainer={option}"], tmp_path)
    validate_config(cfg)
    t = to_plain(cfg.trainer)
    assert t.pop("auto_batch_size") is False
    t["precision"] = t["precision"] or "32-true"
    if option == "fsdp":
        # FSDP needs GPUs: build the strategy object (the auto-wrap policy resolves to the Block class).
        strategy = instantiate(t["strategy"], _convert_="all")
        from halo_lab.model import Block

        assert Block in strategy.kwargs["auto_wrap_policy"]._module_classes
        return
    if option == "ddp":
        t.update(accelerator="cpu", devices=2)
    trainer = instantiate(t, plugins=[AtomicCheckpointIO()], logger=False, _convert_="all")
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert trainer.default_root_dir == cfg.paths.output_dir
    if option == "ddp":
        assert type(trainer.strategy).__name__ == "DDPStrategy" and trainer.num_devices == 2


@pytest.mark.parametrize("option", options("logger"))
def test_logger_options_instantiate(option, tmp_path):
    from halo_lab.runner.build import build_loggers

    cfg = compose([f"logger={option}"], tmp_path)
    loggers = build_loggers(cfg, Path(cfg.paths.output_dir), None)
    names = sorted(type(lg).__name__ for lg in loggers)
    expect = {
        "none": [],
        "csv": ["CSVLogger"],
        "wandb": ["WandbLogger"],
        "wandb_csv": ["CSVLogger", "WandbLogger"],
    }
    assert names == expect[option]


@pytest.mark.parametrize("option", options("callbacks"))
def test_callback_options_instantiate(option, tmp_path):
    from halo_lab.runner.build import instantiate_group

    cfg = compose([f"callbacks={option}"], tmp_path)
    cbs = instantiate_group(cfg.callbacks, "callbacks")
    names = {type(c).__name__ for c in cbs}
    assert "ModelCheckpoint" in names and "MetricsHistory" in names
    last = [c for c in cbs if getattr(c, "save_last", False)]
    assert len(last) == 1 and Path(last[0].dirpath) == Path(cfg.paths.output_dir) / "checkpoints"


def test_callback_can_be_dropped(tmp_path):
    from halo_lab.runner.build import instantiate_group

    cfg = compose(["callbacks.samples=null"], tmp_path)
    assert "SampleGeneration" not in {type(c).__name__ for c in instantiate_group(cfg.callbacks, "callbacks")}


# ---------------------------------------------------------------------------------------------- fail fast
@pytest.mark.parametrize(
    ("overrides", "key"),
    [
        (["model.hidden_size=100"], "model.hidden_size"),  # not divisible by 4 heads
        (["model.num_heads=0"], "model.num_heads"),
        (["model.num_kv_heads=3"], "model.num_heads"),  # 4 heads not divisible by 3 KV heads
        (["model.dropout=1.5"], "model.dropout"),
        (["module.arch=sparse"], "module.arch"),
        (["+model.hiden_size=64"], "model.hiden_size"),
        (["model.dilation_rule=nope"], "model.dilation_rule"),
        (["ablation=no_random", "model.num_random=-1"], "model.num_random"),
        (["data.seq_len=4096"], "data.seq_len"),  # > model.max_seq_len=512
        (["data.batch_size=0"], "data.batch_size"),
        (["trainer.max_steps=0"], "trainer.max_steps"),
        (["optimizer.lr=-1"], "optimizer.lr"),
        (["scheduler.min_lr_ratio=2"], "scheduler.min_lr_ratio"),
        (["logger.wandb.mode=maybe"], "logger.wandb.mode"),
        (["ckpt_path=/nonexistent/last.ckpt"], "ckpt_path"),
        (["device.precision=fp7"], "device.precision"),
        # wrong types: named by the structured configs, not a TypeError inside a comparison
        (["trainer.gradient_clip_val=high"], "trainer.gradient_clip_val"),
        (["model.hidden_size=big"], "model.hidden_size"),
        (["model.dilated_offsets=[1,x]"], "model.dilated_offsets[1]"),
        (["data.seq_len=long"], "data.seq_len"),
        (["optimizer.lr=fast"], "optimizer.lr"),
    ],
)
def test_bad_values_fail_naming_the_key(overrides, key, tmp_path):
    cfg = compose(overrides, tmp_path)
    with pytest.raises(ConfigError, match="^" + re.escape(key)):
        validate_config(cfg)


def test_bad_value_fails_before_any_data_is_touched(tmp_path, monkeypatch):
    from halo_lab.data import HaloDataModule
    from halo_lab.train import run

    def boom(*a, **k):
        raise AssertionError("data touched before the config was checked")

    monkeypatch.setattr(HaloDataModule, "__init__", boom)
    monkeypatch.setattr(HaloDataModule, "prepare_data", boom)
    cfg = compose(["model.hidden_size=100"], tmp_path)
    with pytest.raises(ConfigError, match="model.hidden_size=100"):
        run(cfg)


def test_unknown_key_and_option_are_hydra_errors(tmp_path):
    with pytest.raises(ConfigCompositionException, match="hiden_size"):
        compose(["model.hiden_size=64"], tmp_path)
    with pytest.raises(MissingConfigException):
        compose(["model=halo_nope"], tmp_path)
    with pytest.raises(ConfigCompositionException):
        compose(["no_such_key=1"], tmp_path)


def test_missing_data_path_names_the_key(tmp_path):
    cfg = compose(["data=text"], tmp_path)
    with pytest.raises(Exception, match="data.path"):
        instantiate(cfg.data)
