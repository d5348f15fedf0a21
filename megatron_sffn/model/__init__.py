"""The GPT model: attention, FFN, block, full model, accounting."""
from .gpt import GPTModel

__all__ = ["GPTModel"]
