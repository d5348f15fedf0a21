"""optimizer.update = "compiled" (training/compiled_update.py): the same AdamW step as torch's
fused kernel with the clip factor as grad_scale, the bf16 weights written in the same pass,
nothing stored into the gradients, nothing changed on a non-finite step."""
import pytest
import torch

from megatron_sffn.config import (ConfigError, config_for_another_machine, config_from_dict,
                                  optimizer_update_chosen_because)
from megatron_sffn.training.compiled_update import CompiledAdamW

# ten (16, 8) tensors: more than one chunk of CompiledAdamW.CHUNK, the last one shorter
SHAPES = [(64, 32), (32,), (16, 8), (100,)] + [(16, 8)] * 9
BASE = {"model": {"vocab_size": 128, "hidden_size": 64, "num_layers": 2, "num_heads": 4, "seq_length": 32},
        "training": {"train_steps": 10, "micro_batch_size": 2, "global_batch_size": 8, "precision": "bf16"}}
HYPER = dict(lr=3e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)


def _state(seed):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(*s, generator=g) for s in SHAPES]
    grads = [torch.randn(*s, generator=g) for s in SHAPES]
    exp_avgs = [torch.randn(*s, generator=g).mul_(0.1) for s in SHAPES]
    exp_avg_sqs = [torch.rand(*s, generator=g).mul_(0.01) for s in SHAPES]
    steps = [torch.tensor(4.0) for _ in SHAPES]
    return params, grads, exp_avgs, exp_avg_sqs, steps


def _torch_step(state, grad_scale, found_inf):
    params, grads, exp_avgs, exp_avg_sqs, steps = state
    torch._foreach_add_(steps, 1)
    torch._fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, [], steps, amsgrad=False, lr=HYPER["lr"],
                        beta1=HYPER["betas"][0], beta2=HYPER["betas"][1], weight_decay=HYPER["weight_decay"],
                        eps=HYPER["eps"], maximize=False, grad_scale=grad_scale, found_inf=found_inf)
    torch._foreach_sub_(steps, [found_inf] * len(steps))


def _compiled_step(update, state, lows, grad_scale, found_inf):
    params, grads, exp_avgs, exp_avg_sqs, steps = state
    group = {"params": params, **HYPER}
    update.step([(group, params, grads, exp_avgs, exp_avg_sqs, steps)], [lows], grad_scale, found_inf)


@pytest.mark.parametrize("clip", [None, 2.5], ids=["no-clip", "clip-factor"])
def test_the_compiled_update_is_torchs_fused_adamw_and_writes_the_bf16_weights(clip):
    update = CompiledAdamW()
    want, got = _state(0), _state(0)
    grads_before = [g.clone() for g in got[1]]
    lows = [torch.zeros(*s, dtype=torch.bfloat16) for s in SHAPES]
    found_inf = torch.zeros(())
    scale = None if clip is None else torch.tensor(clip)
    for _ in range(3):  # the learning rate tensor and the steps carried from one call to the next
        torch._foreach_copy_(want[1], grads_before)  # torch's kernel divided them in place: each step's own
        _torch_step(want, scale, found_inf)
        _compiled_step(update, got, lows, scale, found_inf)
    for name, w, g in zip(("params", "exp_avgs", "exp_avg_sqs"), (want[0], want[2], want[3]), (got[0], got[2], got[3])):
        for a, b in zip(g, w):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7, msg=name)
    assert [float(s) for s in got[4]] == [float(s) for s in want[4]] == [7.0] * len(SHAPES)
    for low, p in zip(lows, got[0]):
        assert torch.equal(low, p.to(torch.bfloat16))
    # torch's kernel stores grad / grad_scale back into the gradients; this update leaves them alone
    assert all(torch.equal(a, b) for a, b in zip(got[1], grads_before))


def test_same_shaped_parameters_share_chunks_and_a_few_shapes_of_their_own_get_a_static_call_each():
    params = [torch.zeros(*s) for s in SHAPES] + [torch.zeros(32, dtype=torch.bfloat16)]
    calls = CompiledAdamW.calls(params)
    assert sorted(i for _, ids in calls for i in ids) == list(range(len(params)))
    assert not any(any_size for any_size, _ in calls)
    assert all(len({(params[i].shape, params[i].dtype) for i in ids}) == 1 for _, ids in calls)
    # (16, 8) x 10 in runs of CompiledAdamW.CHUNK; (64, 32), (32,), (100,) and the bf16 (32,) alone
    assert sorted(len(ids) for _, ids in calls) == [1, 1, 1, 1, 2, 8]


def test_many_shapes_of_their_own_go_in_one_call_of_symbolic_sizes():
    """ZeRO 1's pieces cut at bucket edges: more odd sizes than CompiledAdamW.CHUNK."""
    sizes = [7 + i for i in range(CompiledAdamW.CHUNK + 1)]
    params = [torch.zeros(n) for n in sizes] + [torch.zeros(4, 4), torch.zeros(4, 4)]
    calls = CompiledAdamW.calls(params)
    assert calls == [(False, [len(sizes), len(sizes) + 1]), (True, list(range(len(sizes))))]


def test_the_call_of_symbolic_sizes_is_torchs_fused_adamw_too():
    update = CompiledAdamW()
    shapes = [(3 + i, 2) for i in range(CompiledAdamW.CHUNK + 1)]
    g = torch.Generator().manual_seed(2)
    want = ([torch.randn(*s, generator=g) for s in shapes], [torch.randn(*s, generator=g) for s in shapes],
            [torch.zeros(*s) for s in shapes], [torch.zeros(*s) for s in shapes], [torch.tensor(0.0) for _ in shapes])
    got = tuple([t.clone() for t in part] for part in want)
    grads = [t.clone() for t in want[1]]
    lows = [torch.zeros(*s, dtype=torch.bfloat16) for s in shapes]
    found_inf, scale = torch.zeros(()), torch.tensor(2.0)
    for _ in range(2):
        torch._foreach_copy_(want[1], grads)  # torch's kernel divided them in place: each step's own
        _torch_step(want, scale, found_inf)
        _compiled_step(update, got, lows, scale, found_inf)
    assert CompiledAdamW.calls(got[0]) == [(True, list(range(len(shapes))))]
    for a, b in zip(got[0] + got[2] + got[3], want[0] + want[2] + want[3]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    assert all(torch.equal(low, p.to(torch.bfloat16)) for low, p in zip(lows, got[0]))


def test_a_non_finite_step_changes_nothing_and_puts_the_step_count_back():
    update = CompiledAdamW()
    state = _state(1)
    before = [[t.clone() for t in part] for part in state]
    lows = [p.to(torch.bfloat16) for p in state[0]]
    _compiled_step(update, state, lows, torch.tensor(1.0), torch.ones(()))
    for part, old in zip(state, before):
        assert all(torch.equal(a, b) for a, b in zip(part, old))
    assert all(torch.equal(low, p.to(torch.bfloat16)) for low, p in zip(lows, state[0]))


def test_a_named_update_is_kept():
    assert config_from_dict(BASE, ["optimizer.update=compiled"], cuda=False).optimizer.update == "compiled"
    assert config_from_dict(BASE, ["optimizer.update=torch"], cuda=True).optimizer.update == "torch"


@pytest.mark.parametrize("overrides, cuda, update, why", [
    ([], True, "compiled", "auto, compiled blocks"),
    ([], False, "torch", "auto: no compile"),  # compile auto is off without CUDA
    (["training.compile=true"], False, "torch", "auto: no CUDA"),
    (["training.compile=false"], True, "torch", "auto: no compile"),
    (["parallel.zero_stage=2"], True, "torch", "auto: optimizer deepspeed"),
    (["optimizer.update=torch"], True, "torch", "optimizer.update = torch"),
], ids=["gpu-compiled", "cpu", "cpu-compiled", "gpu-eager", "zero2", "explicit"])
def test_auto_compiles_the_update_where_the_fused_optimizer_runs_beside_compiled_blocks_on_a_gpu(
        overrides, cuda, update, why):
    cfg = config_from_dict(BASE, overrides, cuda=cuda)
    assert (cfg.optimizer.update, optimizer_update_chosen_because(cfg)) == (update, why)
    # a config written for another machine decides again there; a named choice stays
    assert config_for_another_machine(cfg)["optimizer"]["update"] == ("torch" if overrides[-1:] == ["optimizer.update=torch"]
                                                                      else "auto")


def test_the_update_is_the_fused_optimizers_and_one_error_elsewhere():
    with pytest.raises(ConfigError, match="'optimizer.update' = 'compiled' is the fused optimizer's.*'deepspeed'"):
        config_from_dict(BASE, ["optimizer.update=compiled", "training.precision=fp32"], cuda=False)
    with pytest.raises(ConfigError, match="optimizer.update"):
        config_from_dict(BASE, ["optimizer.update=triton"], cuda=False)


def test_a_resume_that_follows_a_deepspeed_checkpoint_takes_torchs_update_with_it():
    from megatron_sffn.training.resume_point import _follow_checkpoint_optimizer
    cfg = config_from_dict(BASE, [], cuda=True)
    assert (cfg.optimizer.implementation, cfg.optimizer.update) == ("fused", "compiled")
    assert "follows the checkpoint: deepspeed" in _follow_checkpoint_optimizer(cfg, {"layout": {"optimizer": "deepspeed"}})
    assert (cfg.optimizer.implementation, cfg.optimizer.update) == ("deepspeed", "torch")
    assert optimizer_update_chosen_because(cfg) == "auto: optimizer deepspeed"
    named = config_from_dict(BASE, ["optimizer.update=torch"], cuda=True)
    _follow_checkpoint_optimizer(named, {"layout": {"optimizer": "deepspeed"}})
    assert optimizer_update_chosen_because(named) == "optimizer.update = torch"
