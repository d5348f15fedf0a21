"""torch.compile of guided blocks (self-guided training's guided phase).

a changes every step and reduce_flop draws a branch per layer and step; compiled blocks must
compute what eager blocks compute at every step, and the number of graphs must stay bounded
(a from a tensor input, the draws made outside the graphs), not grow with the steps.
"""
import pytest
import torch
from torch._dynamo.utils import counters

from megatron_sffn.model import GPTModel
from megatron_sffn.model.compile import compile_blocks
from megatron_sffn.structured.guide import GuideState
from tests.distributed.common import tiny_config

pytestmark = pytest.mark.slow

GUIDED_STEPS = 12


def guided_model(layers: int):
    cfg = tiny_config("lowrank_sgt").model
    cfg.num_layers = layers
    state = GuideState(active=True, seed=3, reduce_flop=True)
    return GPTModel(cfg, guided=True, guide_state=state).initialize(1), state


def test_alpha_tensor_follows_alpha():
    state = GuideState(active=True)
    tensor = state.alpha_tensor
    state.set_step(3, 10, "cosine")
    assert state.alpha_tensor is tensor and float(tensor) == pytest.approx(state.alpha)
    state.load_state_dict({"alpha": 0.25})
    assert float(state.alpha_tensor) == 0.25


def test_alpha_tensor_moves_to_the_activations_device_and_keeps_following_alpha():
    # a CPU alpha inside a CUDA graph split the compiled graph and crashed its replay (H200):
    # the block places alpha where its input lives, and later steps fill that tensor
    state = GuideState(active=True)
    state.place_alpha(torch.device("meta"))
    moved = state.alpha_tensor
    assert moved.device.type == "meta"
    state.set_step(3, 10, "cosine")
    assert state.alpha_tensor is moved  # filled in place where it now lives
    state = GuideState(active=True)
    kept = state.alpha_tensor
    state.place_alpha(torch.device("cpu"))
    assert state.alpha_tensor is kept  # already there: no copy
    state.alpha = 0.25
    assert float(state.alpha_tensor) == 0.25


def test_guided_blocks_hand_alpha_to_their_input_device():
    model, state = guided_model(2)
    state.alpha = 1.0  # every guide drawn
    calls = []
    original = GuideState.place_alpha
    GuideState.place_alpha = lambda self, device: calls.append(device) or original(self, device)
    try:
        model.loss(torch.zeros(1, 8, dtype=torch.long), torch.zeros(1, 8, dtype=torch.long))
    finally:
        GuideState.place_alpha = original
    assert calls and all(d == torch.device("cpu") for d in calls)


def test_compiled_guided_blocks_train_like_eager_without_a_graph_per_step():
    torch._dynamo.reset()
    counters.clear()
    eager, eager_state = guided_model(6)
    compiled, compiled_state = guided_model(6)
    assert compile_blocks(compiled) == 6
    generator = torch.Generator().manual_seed(0)
    graphs, draws = [], set()
    for step in range(GUIDED_STEPS):
        for state in (eager_state, compiled_state):
            state.set_step(step, GUIDED_STEPS, "cosine")
        draws.update((eager_state.use_guide(4 * b), eager_state.use_guide(4 * b + 1)) for b in range(1, 6))
        ids = torch.randint(0, 64, (2, 16), generator=generator)
        want, got = eager.loss(ids, ids), compiled.loss(ids, ids)
        want.backward()
        got.backward()
        assert float(got) == pytest.approx(float(want), rel=1e-5), step
        graphs.append(counters["stats"]["unique_graphs"])
    for (name, p), (_, q) in zip(eager.named_parameters(), compiled.named_parameters()):
        scale = p.grad.abs().max().clamp_min(1e-12)
        assert float((q.grad - p.grad).abs().max() / scale) <= 1e-5, name
    assert len(draws) >= 3  # the steps took several branch combinations (guided, unguided, mixed)
    # a graph per combination of an FFN's draws (shared by the blocks), plus the dense first
    # block and the first calls: far fewer than one per step or per block
    assert graphs[-1] <= 12
    assert graphs[-1] < GUIDED_STEPS * 5


def test_compiled_guided_blocks_under_activation_checkpointing_train_like_eager():
    """The draws are made before the compiled body (model/block.py): with them inside, as a
    graph break, recomputing a checkpointed compiled guided block saved a different number of
    tensors than its forward and torch raised a CheckpointError at the first backward."""
    from megatron_sffn.model.pipeline import CheckpointedGPT
    from megatron_sffn.parallel.mappings import TensorParallel
    torch._dynamo.reset()
    counters.clear()
    cfg = tiny_config("lowrank_sgt").model
    models, states = [], []
    for _ in range(2):
        state = GuideState(active=True, seed=3, reduce_flop=True)
        model = CheckpointedGPT(cfg, TensorParallel.single(), True, state, 1)  # every block checkpointed
        model.load_state_dict(guided_model(cfg.num_layers)[0].state_dict())
        models.append(model)
        states.append(state)
    eager, compiled = models
    compile_blocks(compiled)
    generator = torch.Generator().manual_seed(0)
    for step in range(4):
        for state in states:
            state.set_step(step, 4, "cosine")
        ids = torch.randint(0, 64, (2, 16), generator=generator)
        want, got = eager(ids, ids), compiled(ids, ids)
        want.backward()
        got.backward()
        assert float(got) == pytest.approx(float(want), rel=1e-5), step
    assert dict(counters["graph_break"]) == {}
    for (name, p), (_, q) in zip(eager.named_parameters(), compiled.named_parameters()):
        scale = p.grad.abs().max().clamp_min(1e-12)
        assert float((q.grad - p.grad).abs().max() / scale) <= 1e-5, name
