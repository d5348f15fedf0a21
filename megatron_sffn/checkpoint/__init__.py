"""Checkpoint formats beyond DeepSpeed's own: the consolidated (layout-free) checkpoint and
the Hugging Face export."""
