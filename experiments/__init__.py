"""Research scaffolding (not installed, not for users): the experiments behind docs/results.md."""
