"""FP8 training: the GEMMs of the attention projections, dense FFNs and structured factors
with FP8 inputs, dynamic scaling, bf16 outputs; weights, master weights and optimizer state
unchanged (recipe.py: the formats; scaling.py: the casts; products.py: the three products of
a linear as autograd functions; dispatch.py: which weights run FP8; device.py: where FP8 can
run at all; keep_casts.py: compiled backward reusing forward's casts)."""
from .recipe import Fp8Recipe, recipe_from_config  # noqa: F401
