"""Invariant 2 of DESIGN.md: a structured layer equals its merged dense matrix; a guided
layer equals the guide at a = 1 and the structured branch at a = 0."""
import pytest
import torch

from megatron_sffn.parallel.mappings import TensorParallel
from megatron_sffn.structured import GuideState, ParallelLinear, guide_alpha, guide_draw, make_map
from megatron_sffn.structured.ops import block_diag_matmul, block_shuffle
from megatron_sffn.model.init import initialize_piece

TP1 = TensorParallel.single()
SHAPES = [(24, 48), (48, 24)]  # fc1-like (widening) and fc2-like (narrowing)
KIND_ARGS = {"dense": {}, "lowrank": {"rank": 6}, "blockdense": {"rank": 12, "blocks": 4},
             "blockshuffle": {"blocks": 4}}


def _map(kind, n_in, n_out, mode="column", init="paper", dtype=torch.float64):
    m = make_map(kind, n_in, n_out, mode, TP1, **KIND_ARGS[kind])
    gen = torch.Generator().manual_seed(0)
    m.load_full(m.init_full(gen, 0.02, init, "cpu"))
    return m.to(dtype)


@pytest.mark.parametrize("kind", list(KIND_ARGS))
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("mode", ["column", "row"])
def test_structured_equals_merged_dense(kind, shape, mode):
    m = _map(kind, *shape, mode=mode)
    x = torch.randn(5, 3, shape[0], dtype=torch.float64)
    merged = m.merged_weight()
    assert merged.shape == (shape[1], shape[0])
    torch.testing.assert_close(m(x), x @ merged.t(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kind", ["lowrank", "blockdense", "blockshuffle"])
def test_structured_maps_are_genuinely_structured(kind):
    m = _map(kind, 24, 48)
    merged = m.merged_weight()
    params = sum(p.numel() for p in m.parameters())
    assert params < merged.numel()
    if kind == "lowrank":
        assert torch.linalg.matrix_rank(merged) == 6


def test_parameter_counts_match_paper_formulas():
    n, mm = 24, 48
    assert sum(p.numel() for p in _map("lowrank", n, mm).parameters()) == (n + mm) * 6
    assert sum(p.numel() for p in _map("blockdense", n, mm).parameters()) == 12 * (mm + n // 4)
    assert sum(p.numel() for p in _map("blockshuffle", n, mm).parameters()) == min(n, mm) * (n + mm) // 4


@pytest.mark.parametrize("kind", list(KIND_ARGS))
def test_gradcheck_float64(kind):
    m = _map(kind, 24, 48)
    x = torch.randn(4, 24, dtype=torch.float64, requires_grad=True)
    params = list(m.parameters())

    inputs = (x, *[p.detach().clone().requires_grad_(True) for p in params])

    def functional(x, *ps):
        return torch.func.functional_call(m, dict(zip([n for n, _ in m.named_parameters()], ps)), (x,))
    assert torch.autograd.gradcheck(functional, inputs, eps=1e-6, atol=1e-7)


def test_block_diag_matmul_gradcheck_and_reference():
    x = torch.randn(3, 5, 12, dtype=torch.float64, requires_grad=True)
    w = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block_diag_matmul, (x, w))
    ref = x.reshape(-1, 12) @ torch.block_diag(*w).t()
    torch.testing.assert_close(block_diag_matmul(x, w).reshape(-1, 8), ref)


def test_block_shuffle_mixes_every_block():
    x = torch.arange(16.0)[None]
    y = block_shuffle(x, 4)  # 4 blocks of 4: each output block takes one element of each input block
    assert y.tolist() == [[0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15]]
    for b in range(4):
        assert sorted(int(v) // 4 for v in y[0, 4 * b: 4 * b + 4]) == [0, 1, 2, 3]


def test_paper_init_lowrank_is_truncated_svd_of_dense_normal():
    m = _map("lowrank", 24, 48)
    merged = m.merged_weight()
    # V = sqrt(S) Vh and U = U sqrt(S): both factors share the same singular values
    sv_u = torch.linalg.svdvals(m.weight_u)
    sv_v = torch.linalg.svdvals(m.weight_v)
    torch.testing.assert_close(sv_u, sv_v, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(torch.linalg.svdvals(merged)[:6], sv_u ** 2, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("kind", ["blockdense", "blockshuffle"])
def test_paper_init_orthogonalises_blocks(kind):
    m = _map(kind, 24, 48)
    for block in m.blocks_v:
        small = min(block.shape)
        gram = block @ block.t() if block.shape[0] <= block.shape[1] else block.t() @ block
        torch.testing.assert_close(gram, torch.eye(small, dtype=gram.dtype), rtol=1e-5, atol=1e-5)


def _guided(kind, mode="column", alpha=1.0, reduce_flop=False):
    state = GuideState(active=True, alpha=alpha, reduce_flop=reduce_flop)
    n_in, n_out = (24, 48) if mode == "column" else (48, 24)
    lin = ParallelLinear(n_in, n_out, mode, TP1, kind=kind, bias=True, guided=True, guide_state=state,
                         **KIND_ARGS[kind])
    initialize_piece(lin, "test", seed=3, std=0.02, ffn_init="paper", device="cpu")
    with torch.no_grad():  # make the guide differ from the structure so the tests can tell them apart
        lin.guide.weight.add_(torch.randn_like(lin.guide.weight) * 0.05)
        lin.bias.normal_()
    return lin.double(), state


@pytest.mark.parametrize("kind", ["lowrank", "blockdense", "blockshuffle"])
@pytest.mark.parametrize("mode", ["column", "row"])
def test_guided_layer_endpoints(kind, mode):
    lin, state = _guided(kind, mode)
    x = torch.randn(7, lin.structure.in_features, dtype=torch.float64)
    guide_out = x @ lin.guide.weight.t() + lin.bias
    struct_out = lin.structure(x) + lin.bias
    state.alpha = 1.0
    torch.testing.assert_close(lin(x), guide_out)
    state.alpha = 0.0
    torch.testing.assert_close(lin(x), struct_out)
    state.alpha = 0.3
    torch.testing.assert_close(lin(x), 0.3 * guide_out + 0.7 * struct_out)


@pytest.mark.parametrize("kind", ["lowrank", "blockdense", "blockshuffle"])
def test_guide_initialised_to_merged_product(kind):
    state = GuideState(active=True)
    lin = ParallelLinear(24, 48, "column", TP1, kind=kind, guided=True, guide_state=state, **KIND_ARGS[kind])
    initialize_piece(lin, "x", seed=1, std=0.02, ffn_init="paper", device="cpu")
    torch.testing.assert_close(lin.guide.weight, lin.structure.merged_weight(), rtol=1e-5, atol=1e-6)


def test_reduce_flop_uses_guide_with_probability_alpha_and_is_deterministic():
    state = GuideState(active=True, alpha=0.3, reduce_flop=True, seed=11)
    hits = 0
    for step in range(4000):
        state.step = step
        hits += state.use_guide(layer_id=5)
    assert abs(hits / 4000 - 0.3) < 0.03
    assert [guide_draw(11, s, 5) for s in range(10)] == [guide_draw(11, s, 5) for s in range(10)]
    assert guide_draw(11, 0, 5) != guide_draw(11, 0, 6) != guide_draw(12, 0, 6)


def test_guide_schedules():
    for schedule in ("cosine", "linear"):
        assert guide_alpha(0, 100, schedule) == 1.0
        assert guide_alpha(100, 100, schedule) == 0.0
        assert guide_alpha(250, 100, schedule) == 0.0
        assert guide_alpha(50, 100, schedule) == pytest.approx(0.5)
    assert guide_alpha(25, 100, "cosine") > guide_alpha(25, 100, "linear")


def test_drop_guide_removes_parameters():
    lin, _ = _guided("lowrank")
    before = {n for n, _ in lin.named_parameters()}
    lin.drop_guide()
    after = {n for n, _ in lin.named_parameters()}
    assert "guide.weight" in before and "guide.weight" not in after
    assert after == before - {"guide.weight"}
