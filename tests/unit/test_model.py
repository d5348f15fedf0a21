"""The GPT model: every FFN kind and architecture option runs, trains under bf16 autocast,
decodes with a KV cache, and accounting matches the instantiated parameters."""
import dataclasses

import pytest
import torch

from megatron_sffn.config import Config, SelfGuidedConfig, TrainingConfig
from megatron_sffn.model import GPTModel
from megatron_sffn.model.accounting import model_stats, plan_self_guided, dense_equivalent
from megatron_sffn.model.paper import PAPER_XL_PARAMS_M, paper_model

from .helpers import KINDS, tiny_model


def _ids(cfg, batch=2):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, cfg.vocab_size, (batch, cfg.seq_length + 1), generator=g)


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("guided", [False, True])
def test_bf16_autocast_forward_backward(kind, guided):
    cfg = tiny_model(kind)
    model = GPTModel(cfg, guided=guided and kind != "dense").initialize(seed=0)
    if guided and kind != "dense":
        model.guide_state.alpha = 0.5
        model.guide_state.reduce_flop = False
    ids = _ids(cfg)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.loss(ids[:, :-1], ids[:, 1:])
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if guided and kind != "dense":
        assert any(m.guide.weight.grad.abs().sum() > 0 for m in model.structured_linears())


@pytest.mark.parametrize("options", [
    dict(norm="rmsnorm", activation="swiglu", bias=False, tie_embeddings=False),
    dict(num_kv_heads=2),
    dict(num_kv_heads=1, head_dim=16),
])
@pytest.mark.parametrize("kind", ["dense", "lowrank"])
def test_architecture_options_train(options, kind):
    cfg = tiny_model(kind, **options)
    model = GPTModel(cfg).initialize(seed=0)
    ids = _ids(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):  # overfit one batch: the loss must fall
        loss = model.loss(ids[:, :-1], ids[:, 1:])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.3
    assert sum(p.numel() for p in model.parameters()) == model_stats(cfg).total_params


def test_first_layer_ffn_stays_dense():
    model = GPTModel(tiny_model("lowrank", num_layers=3))
    assert [b.ffn.fc1.kind for b in model.blocks] == ["dense", "lowrank", "lowrank"]
    cfg = tiny_model("lowrank")
    cfg.ffn.first_layer_dense = False
    assert GPTModel(cfg).blocks[0].ffn.fc1.kind == "lowrank"


def test_tied_embeddings_share_one_matrix():
    model = GPTModel(tiny_model("dense")).initialize(seed=0)
    assert model.head is None
    names = [n for n, _ in model.named_parameters()]
    assert sum("embedding" in n for n in names) == 1


def test_rope_base_changes_the_model():
    ids = _ids(tiny_model())
    a = GPTModel(tiny_model()).initialize(seed=0)(ids)
    b = GPTModel(tiny_model(rope_base=500.0)).initialize(seed=0)(ids)
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("kind", ["dense", "blockshuffle"])
def test_kv_cache_decoding_matches_full_forward(kind):
    cfg = tiny_model(kind, num_kv_heads=2)
    model = GPTModel(cfg).initialize(seed=0).double()
    ids = _ids(cfg)[:, :12]
    full = model(ids)
    cache = model.new_cache(batch=2, max_len=12)
    steps = [model(ids[:, :5], cache)]  # prefill 5, then 3 + 1 x 4
    steps.append(model(ids[:, 5:8], cache))
    for t in range(8, 12):
        steps.append(model(ids[:, t:t + 1], cache))
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


def test_left_padded_batch_decodes_like_each_prompt_alone():
    cfg = tiny_model("lowrank", num_kv_heads=2)
    model = GPTModel(cfg).initialize(seed=0).double()
    ids = _ids(cfg)[:, :10]
    short = ids[1, 3:]  # row 1 has 3 fewer prompt tokens: left-pad it
    padded = torch.stack([ids[0], torch.cat([torch.zeros(3, dtype=ids.dtype), short])])
    valid = torch.ones_like(padded, dtype=torch.bool)
    valid[1, :3] = False
    cache = model.new_cache(batch=2, max_len=12)
    logits = model(padded, cache, valid)
    torch.testing.assert_close(logits[0], model(ids[:1])[0])
    torch.testing.assert_close(logits[1, 3:], model(short[None])[0])
    nxt = torch.tensor([[5], [7]])
    step = model(nxt, cache)
    torch.testing.assert_close(step[1, 0], model(torch.cat([short, nxt[1]])[None])[0, -1])


def test_drop_guides_frees_parameters():
    cfg = tiny_model("lowrank")
    model = GPTModel(cfg, guided=True).initialize(seed=0)
    n_before = sum(p.numel() for p in model.parameters())
    freed = model.drop_guides()
    assert freed == model_stats(cfg).guide_params > 0
    assert sum(p.numel() for p in model.parameters()) == n_before - freed
    assert not any("guide" in n for n, _ in model.named_parameters())
    ids = _ids(cfg)
    model.loss(ids[:, :-1], ids[:, 1:]).backward()  # still trains


def test_initialisation_is_deterministic_and_seeded():
    cfg = tiny_model("blockdense")
    a = GPTModel(cfg).initialize(seed=5).state_dict()
    b = GPTModel(cfg).initialize(seed=5).state_dict()
    c = GPTModel(cfg).initialize(seed=6).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["blocks.1.ffn.fc1.structure.blocks_v"], c["blocks.1.ffn.fc1.structure.blocks_v"])


@pytest.mark.parametrize("kind", list(PAPER_XL_PARAMS_M))
def test_accounting_matches_paper_within_one_percent(kind):
    total = model_stats(paper_model("1p3b", kind)).total_params / 1e6
    assert abs(total - PAPER_XL_PARAMS_M[kind]) / PAPER_XL_PARAMS_M[kind] < 0.01


def test_flops_scale_with_ffn_params():
    dense = model_stats(paper_model("1p3b", "dense"))
    low = model_stats(paper_model("1p3b", "lowrank"))
    saved = dense.train_flops_per_token - low.train_flops_per_token
    assert saved == pytest.approx(6 * (dense.ffn_matmul_params - low.ffn_matmul_params))
    assert low.guide_train_flops_per_token == pytest.approx(6 * 23 * 2 * 2048 * 8192)


def test_same_flops_plan_meets_the_dense_budget():
    cfg = Config(model=paper_model("1p3b", "lowrank"),
                 self_guided=SelfGuidedConfig(enabled=True, same_flops=True),
                 training=TrainingConfig(train_steps=1000))
    plan = plan_self_guided(cfg, 1000)
    budget = 1000 * 512 * 1024 * model_stats(dense_equivalent(cfg.model)).train_flops_per_token
    assert plan.budget_flops == pytest.approx(budget)
    assert plan.repeat_steps == plan.guided_steps and plan.total_steps == 1000 + plan.guided_steps
    assert 0.98 * budget < plan.total_flops <= budget
    assert 300 < plan.guided_steps < 700  # about half the run, as the paper's ablation uses
    cfg.self_guided = dataclasses.replace(cfg.self_guided, same_flops=False, guided_fraction=0.25)
    assert plan_self_guided(cfg, 1000).guided_steps == 250
