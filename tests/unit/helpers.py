"""Tiny configs shared by the unit tests."""
from megatron_sffn.config import FFNConfig, ModelConfig

KINDS = {
    "dense": {},
    "lowrank": {"rank": 8},
    "blockdense": {"rank": 16, "blocks": 4},
    "blockshuffle": {"blocks": 4},
}


def tiny_model(kind="dense", **overrides) -> ModelConfig:
    fields = dict(vocab_size=128, hidden_size=32, num_layers=2, num_heads=4, ffn_hidden_size=64, seq_length=16)
    fields.update(overrides)
    return ModelConfig(ffn=FFNConfig(kind=kind, **KINDS[kind]), **fields)
