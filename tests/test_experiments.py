"""Experiment configs (conf/experiment/): every one composes, every job of its sweep validates, and each
experiment means what it says (fast: composition only; the sweeps themselves run in test_experiments_e2e).
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from halo_lab.runner.config import ablation_name, compose_config, conf_dir, to_plain, validate_config

CONF = conf_dir()
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))
BASES = ("baseline", "ablation", "needle", "mqar")
SCALES = ("", "_cpu", "_tiny")
GRAPH_FIELDS = ("num_globals", "local_window", "dilated_offsets", "num_random")


@pytest.fixture(autouse=True)
def _clear_hydra():
    yield
    GlobalHydra.instance().clear()


@pytest.fixture(scope="module")
def composed(tmp_path_factory) -> dict:
    """Each experiment composed once (Hydra composition is the slow part)."""
    out = {}
    for name in EXPERIMENTS:
        out[name] = compose_config([f"+experiment={name}"], tmp_path_factory.mktemp(name))
    GlobalHydra.instance().clear()
    return out


def sweep_params(cfg) -> dict[str, list[str]]:
    params = OmegaConf.to_container(cfg.hydra.sweeper.params)
    return {k: [v.strip() for v in str(val).split(",")] for k, val in params.items()}


def job_config(cfg, overrides: dict[str, str]):
    """The config of one sweep job: the experiment composed by Hydra with the job's overrides (group
    options such as ablation=... or variant=... are partial overrides merged by Hydra itself)."""
    job = compose_config([f"+experiment={cfg.task_name}", *(f"{k}={v}" for k, v in overrides.items())])
    GlobalHydra.instance().clear()
    return job


def jobs(cfg) -> list[dict[str, str]]:
    params = sweep_params(cfg)
    keys = sorted(params)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(params[k] for k in keys))]


def test_every_experiment_has_a_cpu_and_a_tiny_scale():
    assert set(EXPERIMENTS) >= {b + s for b in BASES for s in SCALES}
    for name in EXPERIMENTS:
        head = (CONF / "experiment" / f"{name}.yaml").read_text().splitlines()[0]
        assert head == "# @package _global_", name


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_experiment_composes_and_every_sweep_job_validates(name, composed):
    cfg = composed[name]
    assert cfg.task_name == name  # names the sweep directory outputs/multirun/<name>/<time>/
    assert cfg.hydra.sweep.dir.startswith(f"{cfg.paths.log_dir}/multirun/{name}/")
    assert cfg.hydra.callbacks.report._target_ == "halo_lab.report.SweepReport"
    validate_config(cfg)  # the single run without -m
    all_jobs = jobs(cfg)
    assert len(all_jobs) >= 2
    for overrides in all_jobs:
        job = job_config(cfg, overrides)
        checked = validate_config(job)
        assert checked["model_config"]["max_seq_len"] >= job.data.seq_len
        if job.data.dataset == "needle":
            from halo_lab.data import NeedleDataset

            d = to_plain(job.data)
            # The constructor checks that every distance fits the sequence.
            NeedleDataset(
                num_examples=1,
                seq_len=d["seq_len"],
                distances=d["distances"],
                vocab_size=d["vocab_size"],
                num_pairs=d["num_pairs"],
                key_len=d["key_len"],
                value_len=d["value_len"],
            )
        if job.data.dataset == "mqar":
            from halo_lab.data import AssociativeRecallDataset

            d = to_plain(job.data)
            keys = ("seq_len", "vocab_size", "num_pairs", "num_queries", "key_len", "value_len", "layout")
            # The constructor checks that records and queries fit and that the buckets are valid.
            AssociativeRecallDataset(
                num_examples=1, distance_buckets=d["distance_buckets"], **{k: d[k] for k in keys}
            )


@pytest.mark.parametrize("base", BASES)
def test_tiny_scale_is_tiny(base, composed):
    cfg = composed[f"{base}_tiny"]
    assert cfg.trainer.max_steps <= 10 and cfg.model.num_layers == 1 and cfg.model.hidden_size <= 64
    assert cfg.data.seq_len <= 128 and len(jobs(cfg)) <= 5
    assert cfg.device.name == "cpu"


@pytest.mark.parametrize("scale", SCALES)
def test_baseline_compares_arch_at_equal_size_data_steps_and_seed(scale, composed):
    cfg = composed[f"baseline{scale}"]
    params = sweep_params(cfg)
    assert params["variant"] == ["halo", "dense"]
    configs = {}
    for overrides in jobs(cfg):
        job = job_config(cfg, overrides)
        checked = validate_config(job)
        assert checked["arch"] == overrides["variant"]
        # Equal tokens per step at every length.
        assert job.data.batch_size == cfg.tokens_per_batch // job.data.seq_len
        key = overrides["data.seq_len"]
        configs.setdefault(key, []).append((checked["model_config"], to_plain(job.data), job.seed))
    for pair in configs.values():
        (mc_a, data_a, seed_a), (mc_b, data_b, seed_b) = pair
        assert mc_a == mc_b and data_a == data_b and seed_a == seed_b  # only the arch differs


@pytest.mark.parametrize("scale", SCALES)
def test_ablation_sweeps_the_five_options_at_a_long_length(scale, composed):
    cfg = composed[f"ablation{scale}"]
    params = sweep_params(cfg)
    options = sorted(p.stem for p in (CONF / "ablation").glob("*.yaml"))
    assert sorted(params["ablation"]) == options
    seen = {}
    for overrides in jobs(cfg):
        checked = validate_config(job_config(cfg, overrides))
        assert checked["arch"] == "halo"
        seen[(overrides["ablation"], overrides["data.seq_len"])] = {
            k: checked["model_config"][k] for k in GRAPH_FIELDS
        }
    longest = max(int(v) for v in params["data.seq_len"])
    window = seen[("full", str(longest))]["local_window"]
    if scale != "_tiny":
        assert longest >= 16 * window, "the long length must dwarf the window, where the components matter"
    graphs = {str(v) for (opt, n), v in seen.items() if n == str(longest)}
    assert len(graphs) == 5  # five different graphs


@pytest.mark.parametrize("task", ["needle", "mqar"])
@pytest.mark.parametrize("scale", SCALES)
def test_needle_and_mqar_variants_are_halo_dense_and_local_only(task, scale, composed):
    cfg = composed[f"{task}{scale}"]
    assert sweep_params(cfg) == {"variant": ["halo", "dense", "local_only"]}
    assert cfg.data.dataset == task
    local = OmegaConf.to_container(OmegaConf.load(CONF / "ablation" / "local_only.yaml"))
    got = {}
    for overrides in jobs(cfg):
        job = job_config(cfg, overrides)
        checked = validate_config(job)
        got[overrides["variant"]] = (checked["arch"], ablation_name(job), checked["model_config"])
    assert got["halo"][:2] == ("halo", "full") and got["dense"][:2] == ("dense", "full")
    assert got["local_only"][:2] == ("halo", "local_only")
    for k, v in local.items():  # the variant map agrees with conf/ablation/local_only.yaml
        assert got["local_only"][2][k] == v
    assert got["halo"][2]["num_globals"] > 0 and got["halo"][2]["dilated_offsets"]
    if task == "needle":  # distances from 16 up to near the sequence length
        d = list(cfg.data.distances)
        assert min(d) == 16 and max(d) >= 0.75 * cfg.data.seq_len
    else:  # records spread over the context; buckets from the shortest distances to the longest
        from halo_lab.data import AssociativeRecallDataset

        ds = AssociativeRecallDataset(
            num_examples=1,
            **{k: cfg.data[k] for k in ("seq_len", "vocab_size", "num_pairs", "num_queries")},
            **{k: cfg.data[k] for k in ("key_len", "value_len")},
            distance_buckets=to_plain(cfg.data.distance_buckets),
            layout=cfg.data.layout,
        )
        assert ds.distance_buckets[0] <= ds.pair_len and ds.distance_buckets[-1] >= cfg.data.seq_len // 2
        # Zoology's layout: every key queried once, no answer in the input
        assert ds.layout == "zoology" and ds.num_queries == ds.num_pairs >= 4
    # the synthetic-task recipe lives in the experiment configs (issue 14), not the root default
    assert cfg.model.short_conv == 3 and cfg.optimizer.lr == 1e-3 and cfg.model.dropout == 0.0
    if scale == "":
        assert cfg.data.seq_len == 4096 and (cfg.model.hidden_size, cfg.model.num_layers) == (
            256,
            4,
        )  # halo_small


def test_single_variant_override_without_multirun(tmp_path):
    cfg = compose_config(["+experiment=needle_cpu", "variant=local_only"], tmp_path)
    checked = validate_config(cfg)
    assert checked["model_config"]["num_globals"] == 0 and ablation_name(cfg) == "local_only"
    cfg = compose_config(["+experiment=baseline_cpu", "variant=dense", "data.seq_len=1024"], tmp_path)
    assert validate_config(cfg)["arch"] == "dense" and cfg.data.batch_size == 4


def test_experiment_files_only_in_conf_experiment():
    # `experiment` stays out of the root defaults, so `+experiment=NAME` works (DESIGN contract).
    root = OmegaConf.load(CONF / "train.yaml")
    assert not any("experiment" in str(d) for d in root.defaults)
    assert Path(CONF / "experiment").is_dir()


def test_run_gpu_script_runs_every_job_of_each_reference_sweep(composed):
    # experiments/run_gpu.sh spreads the reference-scale sweeps over GPUs: its jobs must be the sweeps'
    # jobs (plus the documented medium-size baseline point), not a drifting copy of them.
    import os
    import subprocess

    script = CONF.parent / "experiments" / "run_gpu.sh"
    env = {**os.environ, "NGPU": "1", "DRY_RUN": "1", "SEEDS": "0", "NEEDLE_SEEDS": "0"}
    lines = subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True, check=True)
    listed: dict[str, list[dict[str, str]]] = {}
    for line in lines.stdout.split("\n"):
        if not line:
            continue
        name, args = line.split("|", 1)
        overrides = dict(a.split("=", 1) for a in args.split() if not a.startswith("+experiment"))
        listed.setdefault(name, []).append(overrides)
    assert sorted(listed) == sorted(BASES)
    for name in BASES:
        cfg = composed[name]
        params = sweep_params(cfg)
        ours = {tuple(sorted((k, v) for k, v in o.items() if k in params)) for o in listed[name]}
        expected = {tuple(sorted(j.items())) for j in jobs(cfg)}
        assert expected <= ours, f"{name}: run_gpu.sh misses {expected - ours}"
        for o in listed[name]:
            steps = int(o["trainer.max_steps"])
            assert steps == cfg.trainer.max_steps, (
                f"{name}: {steps} steps, the config says {cfg.trainer.max_steps}"
            )
