"""parallel/cross_entropy.py on one rank: the chunked loss and its gradient against float64
torch.nn.functional.cross_entropy, for fp32 and bf16 logits and chunk sizes that split the
rows unevenly. (Tensor-parallel vocab slices: tests/distributed/test_layouts.py, 1e-5 vs one process.)"""
import pytest
import torch
import torch.nn.functional as F

from megatron_sffn.parallel.cross_entropy import vocab_parallel_cross_entropy


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("chunk_elements", [7, 50 * 13, 1 << 25])  # one row, 13 rows (uneven), everything
def test_loss_and_gradient_match_float64_cross_entropy(dtype, tolerance, chunk_elements):
    g = torch.Generator().manual_seed(0)
    logits = (4 * torch.randn(3, 29, 50, generator=g)).to(dtype).requires_grad_()
    target = torch.randint(0, 50, (3, 29), generator=g)
    upstream = torch.rand(3, 29, generator=g)
    loss = vocab_parallel_cross_entropy(logits, target, None, chunk_elements=chunk_elements)
    (loss * upstream).sum().backward()
    exact = logits.detach().double().requires_grad_()
    want = F.cross_entropy(exact.view(-1, 50), target.view(-1), reduction="none").view(3, 29)
    (want * upstream.double()).sum().backward()
    assert loss.dtype == torch.float32 and loss.shape == target.shape
    torch.testing.assert_close(loss.double(), want, rtol=tolerance, atol=tolerance)
    assert logits.grad.dtype == dtype  # written in the logits' own dtype, no fp32 copy kept
    scale = exact.grad.abs().max()
    assert float((logits.grad.double() - exact.grad).abs().max() / scale) <= tolerance


def test_extreme_logits_stay_finite():
    logits = torch.tensor([[1e4, -1e4, 0.0], [-3e4, -3e4, -3e4]], requires_grad=True)
    target = torch.tensor([1, 2])
    loss = vocab_parallel_cross_entropy(logits, target, None)
    loss.sum().backward()
    torch.testing.assert_close(loss, torch.tensor([2e4, float(torch.log(torch.tensor(3.0)))]))
    assert torch.isfinite(logits.grad).all()


@pytest.mark.parametrize("dtype,tolerance", [(torch.float32, 1e-5), (torch.bfloat16, 1e-2)])
def test_compiled_passes_match_the_eager_chunks_on_a_vocab_slice(dtype, tolerance):
    """training.compile runs both T x V passes through torch.compile (one fused kernel each);
    on a tensor-parallel-like vocab slice (targets outside it included) loss and gradient
    equal the eager chunked path's."""
    from megatron_sffn.parallel import cross_entropy as ce
    g = torch.Generator().manual_seed(1)
    logits = (4 * torch.randn(37, 40, generator=g)).to(dtype)
    target = torch.randint(0, 120, (37,), generator=g)  # this slice holds ids 40..79
    upstream = torch.rand(37, generator=g)
    results = []
    for compiled in (False, True):
        ce.use_compiled_passes(compiled)
        try:
            x = logits.clone().requires_grad_()
            loss = ce._ChunkedCrossEntropy.apply(x, target, None, 40, 7 * 40)
            (loss * upstream).sum().backward()
            results.append((loss.detach(), x.grad))
        finally:
            ce.use_compiled_passes(False)
    (loss0, grad0), (loss1, grad1) = results
    assert grad1.dtype == dtype and loss1.dtype == torch.float32
    torch.testing.assert_close(loss1, loss0, rtol=tolerance, atol=tolerance)
    torch.testing.assert_close(grad1.float(), grad0.float(), rtol=tolerance, atol=tolerance)
    inside = (target >= 40) & (target < 80)
    assert bool(inside.any()) and bool((~inside).any())
    assert float(grad1.float()[inside.nonzero()[0, 0]].sum()) == pytest.approx(0.0, abs=tolerance)  # softmax - 1
