"""megatron_sffn: Megatron-style pretraining of LLMs with structured FFNs and self-guided training."""
__version__ = "0.1.0"
