"""experiments/sweep/runs.py and plan.py: the runs issue 16 asks for, their configs (the paper's
structures, one recipe), the same-FLOPs budgets, and the seed driving initialisation and data order."""
import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from experiments.sweep import plan, records, runs
from megatron_sffn.config import load_config
from megatron_sffn.model.accounting import dense_equivalent, model_stats, plan_self_guided
from megatron_sffn.model.gpt import GPTModel
from megatron_sffn.training.data_feed import DataFeed
from megatron_sffn.training.phases import RunPhases


def _config(name, overrides=()):
    return load_config(os.path.join(runs.CONFIG_DIR, f"sweep_{name}.json"), list(overrides))


def test_the_sweep_holds_the_runs_issue_16_asks_for():
    names = {r.name for r in runs.SWEEP}
    for kind in ("lowrank", "blockdense", "blockshuffle"):
        assert {f"{kind}_32", f"{kind}_63", f"{kind}_32_sgt"} <= names
    for setting in ("dense", "lowrank_32", "lowrank_32_sgt"):
        seeds = sorted(r.seed for r in runs.SWEEP if r.setting.name == setting and r.scale == 1)
        assert len(set(seeds)) == 3
        assert [r.scale for r in runs.SWEEP if r.setting.name == setting and r.scale > 1] == [4]
    assert len(names) == len(runs.SWEEP) == 20


@pytest.mark.parametrize("setting", runs.SETTINGS, ids=lambda s: s.name)
def test_configs_have_the_papers_structures_and_recipe(setting):
    cfg = _config(setting.name)
    share = records.ffn_shares(cfg)["structured_percent"]
    expected = {None: (100, 100), 32: (29, 32), 63: (58, 63)}[setting.share]
    assert expected[0] <= round(share) <= expected[1]
    m, t, o = cfg.model, cfg.training, cfg.optimizer
    assert (m.hidden_size, m.num_layers, m.ffn_hidden_size, m.seq_length) == (512, 8, 2048, 1024)
    assert (m.norm, m.activation, m.bias, m.tie_embeddings) == ("layernorm", "gelu", True, True)
    assert (t.seed, t.global_batch_size, t.precision, t.eval_iters) == (1234, 64, "bf16", 8)
    assert (o.warmup_fraction, o.min_lr_ratio) == (0.1, 0.1)
    assert cfg.self_guided.enabled == setting.guided == cfg.self_guided.same_flops


def test_sweep_configs_are_in_sync_with_their_generator(tmp_path):
    runs.write_configs(str(tmp_path))
    for setting in runs.SETTINGS:
        name = f"{setting.config_name}.json"
        assert json.load(open(tmp_path / name)) == json.load(open(os.path.join(runs.CONFIG_DIR, name))), name
    assert sorted(os.listdir(tmp_path)) == sorted(n for n in os.listdir(runs.CONFIG_DIR) if n.endswith(".json"))


@pytest.mark.parametrize("kind", ["lowrank", "blockdense", "blockshuffle"])
def test_same_flops_runs_spend_the_dense_runs_flops(kind):
    dense = _config("dense")
    per_step = dense.training.global_batch_size * dense.model.seq_length
    n = 768
    budget = n * per_step * model_stats(dense.model).train_flops_per_token
    sgt = _config(f"{kind}_32_sgt", ["training.train_tokens=null", f"training.train_steps={n}"])
    guide = plan_self_guided(sgt, n)
    assert guide.guided_steps > 0 and guide.total_steps == n + guide.guided_steps
    assert 0.97 < guide.total_flops / budget <= 1.0
    assert model_stats(dense_equivalent(sgt.model)).train_flops_per_token == \
        model_stats(dense.model).train_flops_per_token
    # the report's step-by-step count (guide cost a per step) agrees with the plan's mean-a estimate
    assert abs(records.cumulative_flops(sgt, guide.total_steps)[-1] / guide.total_flops - 1) < 0.01
    if kind == "lowrank":
        flops_run = _config("lowrank_32_flops")
        m = runs.steps_for(runs.SETTING["lowrank_32_flops"], flops_run, n)
        assert m > n and abs(m * per_step * model_stats(flops_run.model).train_flops_per_token / budget - 1) < 0.01


def _plan(name, tmp_path):
    return plan.prepare(runs.BY_NAME[name], runs.CONFIG_DIR, str(tmp_path), runs.DEFAULT_DENSE_TOKENS, 8,
                        smoke=False, user_overrides=[], data=None)


def test_plans_set_seed_and_budget(tmp_path):
    base, seeded, long, sgt_long = (_plan(n, tmp_path) for n in
                                    ("dense", "dense_seed1235", "dense_x4", "lowrank_32_sgt_x4"))
    assert (base.cfg.training.seed, seeded.cfg.training.seed, long.cfg.training.seed) == (1234, 1235, 1234)
    assert base.steps == seeded.steps == 768 and base.tokens == runs.DEFAULT_DENSE_TOKENS
    assert long.steps == 4 * 768 and long.cfg.training.eval_interval == base.cfg.training.eval_interval == 96
    dense_x4_flops = long.steps * 65536 * model_stats(long.cfg.model).train_flops_per_token
    assert 0.97 < plan_self_guided(sgt_long.cfg, 4 * 768).total_flops / dense_x4_flops <= 1.0
    assert "output.checkpoints=false" in base.overrides


def _flat(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def test_the_config_seed_drives_initialisation_and_data_order(tmp_path):
    """What the training loop does with training.seed (pipeline.py initialises the model with it,
    DataFeed shuffles the samples with it), for two seeds of one smoke run."""
    feeds, weights = [], []
    for name in ("dense", "dense_seed1235"):
        p = plan.prepare(runs.BY_NAME[name], runs.CONFIG_DIR, str(tmp_path), 0, 8, smoke=True,
                         user_overrides=[f"data.cache_dir={tmp_path / 'cache'}"], data=None)
        cfg = p.cfg
        weights.append(_flat(GPTModel(cfg.model).initialize(cfg.training.seed)))
        state = SimpleNamespace(data_size=1, rank=0, data_rank=0)
        feed = DataFeed(cfg, state, RunPhases.from_config(cfg), show_progress=False)
        feeds.append([np.asarray(feed.train[i]["tokens"]) for i in range(8)])
    assert not torch.equal(weights[0], weights[1])
    assert any(not np.array_equal(a, b) for a, b in zip(*feeds))
    again = plan.prepare(runs.BY_NAME["dense"], runs.CONFIG_DIR, str(tmp_path), 0, 8, smoke=True,
                         user_overrides=[], data=None).cfg
    assert torch.equal(_flat(GPTModel(again.model).initialize(again.training.seed)), weights[0])


def test_a_finished_run_is_skipped_only_if_it_ran_the_same_plan(tmp_path):
    from experiments.sweep import launch
    here = {"prefix": "/data/here/large_trainvalid_text_document", "tokenizer": "/data/here/t.model",
            "data_split": "303387,2955,0"}
    there = dict(here, prefix="/root/elsewhere/large_trainvalid_text_document", tokenizer="/root/elsewhere/t.model")
    first = plan.prepare(runs.BY_NAME["lowrank_32"], runs.CONFIG_DIR, str(tmp_path), runs.DEFAULT_DENSE_TOKENS, 8,
                         smoke=False, user_overrides=[], data=there)
    launch.save_record(first.run_dir, {"name": first.name, "status": "ok", "config": launch.relative(first.config),
                                       "overrides": first.overrides, "planned_steps": first.steps})
    same = plan.prepare(runs.BY_NAME["lowrank_32"], runs.CONFIG_DIR, str(tmp_path), runs.DEFAULT_DENSE_TOKENS, 8,
                        smoke=False, user_overrides=[], data=here)
    assert plan.finished(same) is not None                 # only the machine's data paths differ
    shorter = plan.prepare(runs.BY_NAME["lowrank_32"], runs.CONFIG_DIR, str(tmp_path), runs.DEFAULT_DENSE_TOKENS // 4,
                           8, smoke=False, user_overrides=[], data=here)
    other_lr = plan.prepare(runs.BY_NAME["lowrank_32"], runs.CONFIG_DIR, str(tmp_path), runs.DEFAULT_DENSE_TOKENS, 8,
                            smoke=False, user_overrides=["optimizer.lr=0.002"], data=here)
    assert plan.finished(shorter) is None and plan.finished(other_lr) is None
    launch.save_record(first.run_dir, dict(launch.read_record(first.run_dir), status="stopped"))
    assert plan.finished(same) is None


def test_each_run_gets_one_gpu_and_no_rank_variables(monkeypatch):
    from experiments.sweep import launch
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    env = launch.child_env(smoke=False, device="2", threads=16)
    assert env["CUDA_VISIBLE_DEVICES"] == "2" and env["OMP_NUM_THREADS"] == "16" and "RANK" not in env
    assert launch.child_env(smoke=True, device="2")["CUDA_VISIBLE_DEVICES"] == ""


def test_a_report_made_without_the_corpus_describes_it_from_the_runs_folder(tmp_path):
    from experiments.sweep import run_sweep
    manifest = {"prefix": "/root/x", "tokenizer": "/root/t.model", "data_split": "303387,2955,0",
                "train_tokens": 65_750_000, "valid_tokens": 540_000, "train_documents": 303387, "valid_documents": 2955}
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "data.json").write_text(json.dumps(manifest))
    args = run_sweep.parse(["--report-only", "--runs-dir", str(tmp_path / "runs"), "--data-dir", str(tmp_path / "no")])
    assert run_sweep.load_data(args) == manifest
    with pytest.raises(SystemExit, match="no unpacked corpus"):
        run_sweep.load_data(run_sweep.parse(["--runs-dir", str(tmp_path / "empty"), "--data-dir", str(tmp_path / "no")]))


def test_an_fp8_sweep_s_report_says_fp8_and_how_its_suite_runs_it(tmp_path):
    """The report of `benchmarks/gpu/run.sh sweep OUT fp8` (runs with training.fp8 on) names FP8 and its
    recipe in the setup, and its reproduce block names the fp8 suite and its tarball; a bf16 sweep's
    does neither."""
    from experiments.sweep import plan, run_sweep, runs

    def setup(*extra):
        args = run_sweep.parse(["--report-only", "--runs-dir", str(tmp_path / "runs"), "--only", "dense", *extra])
        plans = [plan.prepare(r, args.configs_dir, args.runs_dir, args.dense_tokens, args.evals, args.smoke,
                              args.override, None, args.keep_checkpoints) for r in runs.SWEEP if r.name == "dense"]
        return run_sweep.setup_text(args, plans, None)

    fp8 = setup("--override", "training.fp8.enabled=true", "--override", "training.fp8.layers=all")
    assert "bf16 with FP8 on every GEMM weight (tensorwise scaling, e4m3 forward, e5m2 gradients)" in fp8["setup"]
    assert 'benchmarks/gpu/run.sh sweep "$OUT" fp8' in fp8["reproduce"] and "sweep_fp8_runs.tar.gz" in fp8["reproduce"][1]
    bf16 = setup()
    assert "FP8" not in bf16["setup"] and ", bf16, ZeRO-1" in bf16["setup"]
    assert 'benchmarks/gpu/run.sh sweep "$OUT"' in bf16["reproduce"] and "sweep_runs.tar.gz" in bf16["reproduce"][1]
