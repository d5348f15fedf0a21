"""The learning sweep: dense vs structured FFNs vs self-guided training on real text (docs/sweep.md)."""
