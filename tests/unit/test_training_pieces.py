"""Pure pieces of the training run: LR schedule, self-guided phases, CLI, stop requests."""
import os
import signal

import pytest

from megatron_sffn.config import Config, OptimizerConfig, SelfGuidedConfig, TrainingConfig, config_from_dict
from megatron_sffn.model.paper import paper_model
from megatron_sffn.training.cli import data_path_overrides, parse
from megatron_sffn.training.faults import NonFiniteGuard, StopRequests
from megatron_sffn.training.lr_schedule import learning_rate
from megatron_sffn.training.phases import RunPhases


def test_lr_warmup_then_cosine_to_floor():
    opt = OptimizerConfig(lr=1e-3, min_lr_ratio=0.1, warmup_fraction=0.1)
    lrs = [learning_rate(s, opt, 100) for s in range(100)]
    assert lrs[0] == pytest.approx(1e-4) and lrs[9] == pytest.approx(1e-3)
    assert all(a < b for a, b in zip(lrs[:9], lrs[1:10]))           # warmup rises
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))          # cosine falls
    assert lrs[-1] == pytest.approx(1e-4, rel=0.01)                 # to the floor
    assert learning_rate(55, opt, 100) == pytest.approx(1e-4 + 0.5 * 9e-4)  # half way
    assert learning_rate(10, OptimizerConfig(lr=1.0, warmup_steps=0), 100) < 1.0


def _sg_config(**sg):
    return Config(model=paper_model("110m", "lowrank"), self_guided=SelfGuidedConfig(enabled=True, **sg),
                  training=TrainingConfig(train_steps=200, global_batch_size=8))


def test_phases_plain_guided_run():
    phases = RunPhases.from_config(_sg_config(guided_fraction=0.5))
    assert phases.total_steps == 200 and phases.guided_steps == 100
    assert phases.alpha(0) == 1.0 and phases.alpha(100) == 0.0 and 0 < phases.alpha(50) < 1
    assert [phases.data_step(s) for s in (0, 150, 199)] == [0, 150, 199]


def test_phases_same_flops_repeats_guided_data():
    phases = RunPhases.from_config(_sg_config(same_flops=True))
    g = phases.guided_steps
    assert phases.total_steps == 200 + g and phases.plan.repeat_steps == g
    assert phases.data_step(199) == 199 and phases.data_step(200) == 0 and phases.data_step(200 + g - 1) == g - 1
    assert phases.plan.total_flops <= phases.plan.budget_flops


def test_cli_shortcuts_become_overrides():
    args, overrides = parse(["--config", "c.json", "--train-steps", "7", "--tensor-parallel", "2",
                             "--run-dir", "/tmp/x", "--override", "model.ffn.rank=4",
                             "--data-path", "0.7", "a", "0.3", "b"])
    assert "model.ffn.rank=4" in overrides and "training.train_steps=7" in overrides
    assert "training.train_tokens=null" in overrides and "parallel.tensor=2" in overrides
    assert 'output.run_dir="/tmp/x"' in overrides
    assert data_path_overrides(["x", "y"]) == ['data.paths=["x", "y"]', "data.weights=null"]
    data = {"model": {"ffn": {"kind": "lowrank", "rank": 8}, "hidden_size": 64, "num_heads": 4,
                      "ffn_hidden_size": 128, "vocab_size": 64, "num_layers": 2},
            "training": {"train_tokens": 100, "global_batch_size": 8, "micro_batch_size": 2}}
    cfg = config_from_dict(data, overrides)
    assert cfg.training.train_steps == 7 and cfg.training.train_tokens is None
    assert cfg.data.paths == ["a", "b"] and cfg.data.weights == [0.7, 0.3] and cfg.model.ffn.rank == 4
    assert "parallel.sequence_parallel=false" in parse(["--config", "c.json", "--no-sequence-parallel"])[1]
    assert "parallel.sequence_parallel=true" in parse(["--config", "c.json", "--sequence-parallel"])[1]
    assert not any("sequence_parallel" in o for o in overrides)  # neither flag: the config's ("auto")


def test_sigterm_sets_the_stop_flag_instead_of_killing():
    stop = StopRequests().install()
    try:
        assert stop.local_reason() is None
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.local_reason() == "received SIGTERM"
    finally:
        stop.uninstall()


def test_wall_clock_limit():
    stop = StopRequests(exit_duration_minutes=1e-9)
    assert "exit-duration-minutes" in stop.local_reason()


def test_nonfinite_guard_counts_runs():
    guard = NonFiniteGuard(3)
    for skipped in (True, True, False, True, True):
        guard.record(skipped)
    assert guard.total == 4 and guard.in_a_row == 2 and not guard.should_stop
    guard.record(True)
    assert guard.should_stop
