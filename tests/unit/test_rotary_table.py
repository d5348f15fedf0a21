"""RoPE's cos/sin tables: computed once at construction, read (not recomputed) by a compiled
block, kept out of checkpoints, and the same values the angles give."""
import torch

from megatron_sffn.config import load_config
from megatron_sffn.model.gpt import GPTModel
from megatron_sffn.model.layers import Rotary


def test_table_holds_the_angles_and_slices_by_position():
    rotary = Rotary(16, 10000.0, max_positions=64)
    cos, sin = rotary.cos_sin(8, 32, torch.device("cpu"), torch.float32)
    want_cos, want_sin = rotary._angles_cos_sin(8, 32, torch.device("cpu"), torch.float32)
    assert torch.equal(cos, want_cos) and torch.equal(sin, want_sin)
    # beyond the table (decoding past the training length): computed, the same formula
    cos, sin = rotary.cos_sin(60, 8, torch.device("cpu"), torch.float32)
    want_cos, _ = rotary._angles_cos_sin(60, 8, torch.device("cpu"), torch.float32)
    assert torch.equal(cos, want_cos) and cos.shape == (8, 16)


def test_compiled_attention_reads_the_table_instead_of_computing_cos_and_sin():
    rotary = Rotary(16, 10000.0, max_positions=32)
    ops = []

    def recording_backend(gm, example_inputs):
        ops.extend(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm

    def rotate(q):
        cos, sin = rotary.cos_sin(0, q.shape[-2], q.device, q.dtype)
        return Rotary.rotate(q, cos, sin)

    torch._dynamo.reset()
    q = torch.randn(2, 4, 32, 16)
    assert torch.equal(torch.compile(rotate, backend=recording_backend)(q), rotate(q))
    assert ops and not any("cos" in op or "sin" in op or "pow" in op for op in ops), ops


def test_tables_follow_the_module_and_stay_out_of_the_state_dict():
    cfg = load_config("configs/tiny_demo.json", [])
    model = GPTModel(cfg.model)
    assert not any("table" in k for k in model.state_dict())
    tables = [b for n, b in model.named_buffers() if n.endswith("cos_table")]
    assert len(tables) == cfg.model.num_layers and tables[0].shape == (cfg.model.seq_length, cfg.model.attn_head_dim)
    model.to(torch.bfloat16)
    assert next(b for n, b in model.named_buffers() if n.endswith("sin_table")).dtype == torch.bfloat16
