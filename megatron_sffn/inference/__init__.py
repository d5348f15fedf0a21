"""Inference: KV-cache generation and pre-merge dispatch of structured FFN maps."""
