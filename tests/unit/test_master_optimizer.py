"""training/master_optimizer.py in one process: main-gradient accumulation, clipping folded
into AdamW, skipped non-finite steps, checkpoints, and the config rules that select it.
(The multi-rank layouts, pipeline tied embeddings included, are tests/distributed/test_layouts.py.)"""
import io
import math
from types import SimpleNamespace

import pytest
import torch
import torch.nn as nn

from megatron_sffn.config import ConfigError, OptimizerConfig, config_from_dict, optimizer_chosen_automatically
from megatron_sffn.training.master_optimizer import MasterWeightAdamW, ShardedMasterAdamW

ONE_RANK = SimpleNamespace(data_size=1, data_rank=0, tensor_size=1, pipe_size=1, data_group=None)


def build(clip: float = 1.0, seed: int = 0, cls=MasterWeightAdamW, update: str = "auto"):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.GELU(), nn.Linear(16, 4))
    reference = [p.detach().clone() for p in model.parameters()]
    cfg = OptimizerConfig(lr=1e-2, weight_decay=0.1, grad_clip=clip, update=update)
    opt = cls(model, cfg, ONE_RANK, counted_in_norm=lambda p: True)
    for p in model.parameters():
        p.data = p.data.to(torch.bfloat16)
    return model, opt, reference, cfg


def backward(model, seed: int, scale: float = 1.0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 8, generator=g).to(torch.bfloat16)
    loss = model(x).float().pow(2).mean() * scale
    loss.backward()
    return {n: p.grad for n, p in model.named_parameters()}  # None: the hook took them


def test_masters_start_from_the_fp32_values_and_gradients_accumulate_in_fp32():
    model, opt, reference, _ = build()
    for master, value in zip(opt_masters_in_module_order(opt, model), reference):
        assert master.dtype == torch.float32 and torch.equal(master, value)
    seen = {}
    for n, p in model.named_parameters():  # each micro-batch's bf16 gradient, before the hook takes it
        p.register_hook(lambda g, n=n: seen.setdefault(n, []).append(g.float()))
    for seed in (1, 2):  # two micro-batches of one step: copy, then add
        grads = backward(model, seed)
        assert all(g is None for g in grads.values())  # moved into the main buffer, bf16 copy freed
    for n, p in model.named_parameters():
        assert len(seen[n]) == 2 and torch.equal(opt.full_grad_of(p), seen[n][0] + seen[n][1]), n
    opt.step()
    seen.clear()
    backward(model, 3)  # the next step starts over (a copy), not on top of the last step's sum
    for n, p in model.named_parameters():
        assert torch.equal(opt.full_grad_of(p), seen[n][0]), n


def test_a_parameter_without_gradient_this_step_steps_with_zero_not_last_steps_gradient():
    model, opt, _, _ = build()
    backward(model, 1)
    opt.step()
    last = model[2]
    for p in last.parameters():
        p.requires_grad_(False)
    backward(model, 2)
    for p in last.parameters():
        p.requires_grad_(True)
    opt.reduce_gradients()
    assert all(float(opt.full_grad_of(p).abs().max()) == 0.0 for p in last.parameters())
    assert float(opt.full_grad_of(model[0].weight).abs().max()) > 0


def test_a_complete_bucket_goes_in_as_one_pass_and_the_rest_parameter_by_parameter(monkeypatch):
    """Gradients of a bucket wait on their parameters until the bucket is complete, then go into
    the fp32 buffer in one pass (a multi-tensor copy, or a concatenated add); a backward that
    leaves a bucket incomplete (a parameter without gradient) hands the rest in at its end, slice
    by slice. The sums are the same either way: a parameter missing in the first micro-batch and
    present in the second gets a copy there, its neighbours an add."""
    import megatron_sffn.training.master_optimizer as module
    one_by_one = []
    original = module._accumulate_one_by_one
    monkeypatch.setattr(module, "_accumulate_one_by_one", lambda waiting: (one_by_one.append(len(waiting)),
                                                                           original(waiting)))
    model, opt, _, _ = build()
    seen = {}
    for n, p in model.named_parameters():
        p.register_hook(lambda g, n=n: seen.setdefault(n, []).append(g.float()))
    backward(model, 1)
    assert one_by_one == [] and all(not b.waiting for b in opt._buckets)  # the one bucket was complete
    for n, p in model.named_parameters():
        assert torch.equal(opt.full_grad_of(p), seen[n][0]), n
    opt.step()
    seen.clear()
    late = model[2].weight
    late.requires_grad_(False)
    backward(model, 2)  # model[2].weight missing: the bucket stays incomplete until backward ends
    late.requires_grad_(True)
    assert one_by_one == [3] and all(not b.waiting for b in opt._buckets)
    backward(model, 3)  # late's first gradient of the step (a copy) beside the others' adds
    assert one_by_one == [3, 4]
    for n, p in model.named_parameters():
        assert torch.equal(opt.full_grad_of(p), sum(seen[n])), n


@pytest.mark.parametrize("clip", [0.0, 1e-3, 1e3])
def test_one_step_equals_torch_adamw_on_fp32_with_clip_grad_norm(clip):
    """Clipping is folded into fused AdamW's grad_scale (or a multiply without it): the
    masters after two steps equal torch AdamW + clip_grad_norm_ on the same fp32 gradients."""
    model, opt, reference, cfg = build(clip)
    ref_params = [nn.Parameter(r.clone()) for r in reference]
    names = [n for n, _ in model.named_parameters()]
    decay = [p for p, r in zip(ref_params, reference) if r.dim() >= 2]
    no_decay = [p for p, r in zip(ref_params, reference) if r.dim() < 2]
    ref_opt = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                                 {"params": no_decay, "weight_decay": 0.0}], lr=cfg.lr, betas=(cfg.beta1, cfg.beta2),
                                eps=cfg.eps)
    for seed in (1, 2):
        backward(model, seed)
        for name, p in zip(names, ref_params):
            p.grad = opt.full_grad_of(dict(model.named_parameters())[name]).clone()
        norm = torch.nn.utils.clip_grad_norm_(ref_params, clip if clip > 0 else float("inf"))
        opt.step()
        assert not opt.overflow and opt._global_grad_norm == pytest.approx(float(norm), rel=1e-6)
        ref_opt.step()
        masters = {n: m for n, m in zip(names, opt_masters_in_module_order(opt, model))}
        for name, p in zip(names, ref_params):
            torch.testing.assert_close(masters[name], p.detach(), rtol=1e-6, atol=1e-7)
            assert torch.equal(dict(model.named_parameters())[name], masters[name].to(torch.bfloat16))


@pytest.fixture
def one_rank_world(monkeypatch):
    """A one-rank gloo group: ZeRO 1's norm all-reduces over the data-parallel group."""
    import torch.distributed as dist
    started_here = not dist.is_initialized()
    if started_here:
        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", "29583")
        dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    if started_here:
        dist.destroy_process_group()


def test_zero1_on_one_data_rank_keeps_no_second_gradient_buffer_and_steps_like_zero0(one_rank_world):
    """ZeRO 1 with one data rank (a 1-GPU run of a ZeRO-1 config) owns every element: its shard
    gradients are the main buffer itself (no 4 bytes/parameter more, no copy per step), and it
    steps exactly like the replicated optimizer, clipping included."""
    model0, opt0, _, _ = build(clip=1e-2)
    model1, opt1, _, _ = build(clip=1e-2, cls=ShardedMasterAdamW)
    assert opt1._shard_grad is None and opt1._total == opt0._total  # no shard buffer of its own
    for seed in (1, 2, 3):
        backward(model0, seed), backward(model1, seed)
        mains = {bucket.main.untyped_storage().data_ptr() for bucket in opt1._buckets}
        assert all(piece.grad.untyped_storage().data_ptr() in mains for piece, _, _ in opt1._pieces.values())
        opt0.step(), opt1.step()
        assert opt1._global_grad_norm == opt0._global_grad_norm
    for p0, p1 in zip(model0.parameters(), model1.parameters()):
        assert torch.equal(p0, p1)
        assert torch.equal(opt0.full_master_of(p0), opt1.full_master_of(p1))


@pytest.mark.parametrize("chunk", [8, 2], ids=["static-graphs", "symbolic-sizes"])
@pytest.mark.parametrize("cls", [MasterWeightAdamW, ShardedMasterAdamW], ids=["zero0", "zero1"])
def test_a_step_of_one_backward_hands_its_bf16_gradients_to_the_compiled_update_unbuffered(cls, chunk, one_rank_world,
                                                                                         monkeypatch):
    """With the compiled update, a step of one backward on one data rank (the engine says so:
    single_micro_batch) keeps its bf16 gradients and the update reads them: no fp32 buffer gets
    memory, and gradients, norm, masters, moments and weights are bit for bit the buffered
    optimizer's (the buffer held the same values, cast exactly), clipping and a parameter
    without gradient and a non-finite step included. The first step makes AdamW's state through the buffer. With
    chunks of 2 the model's four shapes of their own go through the graph of symbolic sizes (as
    a 1.3B model's do)."""
    from megatron_sffn.training.compiled_update import CompiledAdamW
    monkeypatch.setattr(CompiledAdamW, "CHUNK", chunk)
    model0, buffered, _, _ = build(clip=1e-2, cls=cls, update="compiled")
    model1, held, _, _ = build(clip=1e-2, cls=cls, update="compiled")
    held.single_micro_batch = True
    for seed in (1, 2, 3, 4, 5):
        frozen = model0[2].parameters() if seed == 3 else []  # no gradient this step: steps with zeros
        for p in list(frozen) + (list(model1[2].parameters()) if seed == 3 else []):
            p.requires_grad_(False)
        scale = float("inf") if seed == 4 else 1.0  # a non-finite step: skipped alike
        backward(model0, seed, scale), backward(model1, seed, scale)
        for p in list(model0.parameters()) + list(model1.parameters()):
            p.requires_grad_(True)
        assert [b.allocated for b in held._buckets] == [seed == 1] * len(held._buckets), seed
        assert (held._bf16_grads is None) == (seed == 1), seed
        held.reduce_gradients(), buffered.reduce_gradients()
        for p0, p1 in zip(model0.parameters(), model1.parameters()):
            torch.testing.assert_close(held.full_grad_of(p1), buffered.full_grad_of(p0), rtol=0, atol=0,
                                       equal_nan=True, msg=str(seed))
        buffered.step(), held.step()
        assert held.overflow == buffered.overflow == (seed == 4), seed
        if seed != 4:
            assert held._global_grad_norm == buffered._global_grad_norm, seed
        for p0, p1 in zip(model0.parameters(), model1.parameters()):
            assert torch.equal(p0, p1), seed
            assert torch.equal(buffered.full_master_of(p0), held.full_master_of(p1)), seed
            assert torch.equal(buffered.full_moment_of(p0, "exp_avg_sq"), held.full_moment_of(p1, "exp_avg_sq"))
    assert held._bf16_grads is None  # released with the step
    held.single_micro_batch = False  # two backwards in a step: the buffer again
    backward(model1, 5), backward(model1, 6)
    assert held._bf16_grads is None and all(b.allocated for b in held._buckets)


def opt_masters_in_module_order(opt, model):
    by_param = {id(lp): hp for lg, hg in zip(opt.fp16_groups, opt.fp32_groups) for lp, hp in zip(lg, hg)}
    return [by_param[id(p)] for p in model.parameters()]


def test_a_nonfinite_gradient_skips_the_step_and_leaves_everything_untouched():
    model, opt, _, _ = build()
    backward(model, 1)
    opt.step()
    before = [m.clone() for m in opt_masters_in_module_order(opt, model)]
    moments = {id(k): v["exp_avg"].clone() for k, v in opt.state.items()}
    backward(model, 2, scale=float("inf"))
    opt.step()
    assert opt.overflow and not math.isfinite(opt._global_grad_norm)
    assert all(torch.equal(a, b) for a, b in zip(before, opt_masters_in_module_order(opt, model)))
    assert all(torch.equal(moments[id(k)], v["exp_avg"]) for k, v in opt.state.items())
    assert all(int(v["step"]) == 1 for v in opt.state.values())
    backward(model, 3)
    opt.step()
    assert not opt.overflow and all(int(v["step"]) == 2 for v in opt.state.values())


def test_state_dict_round_trip_and_a_foreign_state_is_refused():
    model, opt, _, _ = build()
    for seed in (1, 2):
        backward(model, seed)
        opt.step()
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)  # as DeepSpeed's checkpoint does (state_dict() does not copy)
    buffer.seek(0)
    model2, opt2, _, _ = build(seed=5)
    opt2.load_state_dict(torch.load(buffer))
    assert all(int(v["step"]) == 2 for v in opt2.state.values()) and len(opt2.state) == 4
    for a, b in zip(opt_masters_in_module_order(opt, model), opt_masters_in_module_order(opt2, model2)):
        assert torch.equal(a, b)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
    backward(model, 3), backward(model2, 3)
    opt.step(), opt2.step()
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), model2.parameters()))
    with pytest.raises(ValueError, match="implementation = 'fused'"):
        opt2.load_state_dict({"state": {}, "param_groups": []})  # a plain torch optimizer's state


def _config(**sections):
    raw = {"model": {"hidden_size": 32, "num_layers": 2, "num_heads": 4, "ffn_hidden_size": 64, "vocab_size": 64,
                     "seq_length": 16},
           "training": {"train_steps": 2, "micro_batch_size": 1, "global_batch_size": 1}}
    for key, value in sections.items():
        raw.setdefault(key, {}).update(value)
    return config_from_dict(raw)


def test_config_selects_and_checks_the_implementation():
    cfg = _config(optimizer={"implementation": "fused"}, parallel={"zero_stage": 0}, training={"precision": "bf16"})
    assert cfg.optimizer.implementation == "fused"
    auto = _config()  # 'auto': fused where it applies (bf16 + ZeRO 0/1), DeepSpeed's otherwise
    assert auto.optimizer.implementation == "fused" and optimizer_chosen_automatically(auto)
    assert auto.to_dict()["optimizer"]["implementation"] == "fused"  # saved configs name the one that ran
    for sections in ({"training": {"precision": "fp32"}}, {"training": {"precision": "fp16"}},
                     {"parallel": {"zero_stage": 2}}):
        assert _config(**sections).optimizer.implementation == "deepspeed", sections
    explicit = _config(optimizer={"implementation": "deepspeed"})
    assert explicit.optimizer.implementation == "deepspeed" and not optimizer_chosen_automatically(explicit)
    assert _config(optimizer={"implementation": "fused"}, training={"precision": "bf16"}).parallel.zero_stage == 1
    with pytest.raises(ConfigError, match="'optimizer.implementation'.*'parallel.zero_stage' = 0 or 1, got 2"):
        _config(optimizer={"implementation": "fused"}, parallel={"zero_stage": 2}, training={"precision": "bf16"})
    with pytest.raises(ConfigError, match="'optimizer.implementation'.*'training.precision'.*'fp32'"):
        _config(optimizer={"implementation": "fused"}, parallel={"zero_stage": 0}, training={"precision": "fp32"})
    with pytest.raises(ConfigError, match="optimizer.implementation"):
        _config(optimizer={"implementation": "apex"})
