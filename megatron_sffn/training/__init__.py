"""Training: the engine over DeepSpeed, the optimizer, and the loop's named steps."""
