"""CUDA-graph decoding: the fixed-shape step it captures matches the eager decode (CPU), the
CPU fallback gives the eager tokens, and on a GPU the replayed graph gives the eager tokens."""
import pytest
import torch

from megatron_sffn.inference.cuda_graph import DecodeGraph, decode_step
from megatron_sffn.inference.generation import SamplingConfig, generate
from megatron_sffn.inference.premerge import apply_premerge
from megatron_sffn.model import GPTModel

from .helpers import tiny_model

PROMPTS = [[3, 17, 42, 9, 5], [7, 1], [11, 12, 13]]  # left-padded to 5: 0, 3 and 2 pads
CASES = {
    "lowrank": dict(kind="lowrank", num_kv_heads=2),
    "blockshuffle+premerge": dict(kind="blockshuffle", premerge="on"),
    "dense-llama": dict(kind="dense", num_kv_heads=2, norm="rmsnorm", activation="swiglu", bias=False,
                        tie_embeddings=False),
}


def _model(kind, premerge=None, device="cpu", dtype=torch.float32, **overrides):
    model = GPTModel(tiny_model(kind, **overrides)).initialize(seed=1).to(device=device, dtype=dtype).eval()
    if premerge:
        apply_premerge(model, premerge)
    return model


def _prefill(model, prompts, new_tokens):
    """A cache holding the left-padded prompts, and the last prompt position's logits."""
    device = next(model.parameters()).device
    longest = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), longest, dtype=torch.long, device=device)
    valid = torch.zeros(len(prompts), longest, dtype=torch.bool, device=device)
    for row, p in enumerate(prompts):
        ids[row, longest - len(p):] = torch.tensor(p)
        valid[row, longest - len(p):] = True
    cache = model.new_cache(len(prompts), longest + new_tokens)
    with torch.no_grad():
        return cache, model(ids, cache, valid)[:, -1]


@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-6)])
@pytest.mark.parametrize("case", list(CASES))
def test_fixed_shape_step_matches_eager_decode(case, dtype, tol):
    """Greedy decoding of 6 tokens, batch 3 with left padding: the step the graph captures,
    run eagerly, gives the eager decode's logits and leaves the same cache behind."""
    model = _model(dtype=dtype, **CASES[case])
    eager_cache, logits = _prefill(model, PROMPTS, 6)
    fixed_cache, fixed_logits = _prefill(model, PROMPTS, 6)
    step = DecodeGraph(model, fixed_cache, graph=False)
    for _ in range(6):
        token = logits.argmax(dim=-1)
        with torch.no_grad():
            logits = model(token[:, None], eager_cache)[:, -1]
        fixed_logits = step(token)
        torch.testing.assert_close(fixed_logits, logits, rtol=tol, atol=tol)
    assert fixed_cache.length == eager_cache.length == 5 + 6
    assert torch.equal(fixed_cache.valid, eager_cache.valid)
    for a, b in zip(fixed_cache.k + fixed_cache.v, eager_cache.k + eager_cache.v):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_repeated_step_rewrites_the_same_column():
    """Warm-up and capture run the step several times on the same inputs: the cache must end
    as after one run (else the graph's first token would see itself twice)."""
    model = _model("lowrank")
    once, logits = _prefill(model, PROMPTS, 2)
    thrice, _ = _prefill(model, PROMPTS, 2)
    ids, column = logits.argmax(dim=-1)[:, None], torch.tensor([once.length])
    with torch.no_grad():
        expected = decode_step(model, once, ids, column)
        for _ in range(3):
            got = decode_step(model, thrice, ids, column)
    torch.testing.assert_close(got, expected, rtol=0, atol=0)
    assert torch.equal(thrice.valid, once.valid) and thrice.length == once.length == 5
    assert all(torch.equal(a, b) for a, b in zip(thrice.k + thrice.v, once.k + once.v))


def test_full_cache_is_refused():
    model = _model("lowrank")
    cache, logits = _prefill(model, PROMPTS, 1)
    step = DecodeGraph(model, cache, graph=False)
    step(logits.argmax(dim=-1))
    with pytest.raises(ValueError, match="KV cache holds 6 positions"):
        step(logits.argmax(dim=-1))


@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.8, top_k=20, top_p=0.9, seed=3)])
def test_cuda_graphs_fall_back_to_eager_on_cpu(sampling):
    model = _model("lowrank", num_kv_heads=2)
    sampling = SamplingConfig(max_new_tokens=8, **sampling)
    eager = generate(model, PROMPTS, sampling)
    with pytest.warns(UserWarning, match="decoding eagerly"):
        fallback = generate(model, PROMPTS, sampling, cuda_graphs=True)
    assert fallback == eager and all(len(t) == 8 for t in eager)


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@cuda
@pytest.mark.parametrize("kind", ["lowrank", "blockdense", "blockshuffle"])
@pytest.mark.parametrize("premerge", ["off", "on", "auto"])
@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=0.8, top_k=20, top_p=0.9, seed=3)])
def test_graph_gives_eager_tokens_on_gpu(kind, premerge, sampling):
    """fp32 on the GPU: the replayed graph and eager decoding emit the same tokens; auto
    dispatches the 3-token decode step to the merged matrix and the 15-token prefill to the factors."""
    model = _model(kind, num_kv_heads=2, device="cuda")
    apply_premerge(model, premerge, default_threshold=len(PROMPTS))
    sampling = SamplingConfig(max_new_tokens=12, stop_token=5, **sampling)
    assert generate(model, PROMPTS, sampling, cuda_graphs=True) == generate(model, PROMPTS, sampling)


@cuda
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_graph_replay_gives_the_fixed_step_logits_on_gpu(dtype, tol):
    """Replays (after capture) give the logits of the same step run eagerly, token after token."""
    model = _model("lowrank", num_kv_heads=2, device="cuda", dtype=dtype)
    graph_cache, logits = _prefill(model, PROMPTS, 8)
    eager_cache, _ = _prefill(model, PROMPTS, 8)
    graph, eager = DecodeGraph(model, graph_cache), DecodeGraph(model, eager_cache, graph=False)
    for _ in range(8):
        token = logits.argmax(dim=-1)
        logits = eager(token)
        torch.testing.assert_close(graph(token), logits, rtol=tol, atol=tol)
    assert graph.graph is not None and graph_cache.length == eager_cache.length
