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
