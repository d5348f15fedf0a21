# Sourced by benchmarks/gpu/run.sh from the repository root: the lent GPU machines'
# settings (TORCH_CUDA_ARCH_LIST=9.0: the image's 9.0a breaks DeepSpeed's JIT op builder;
# NCCL_NVLS_ENABLE=0 on the multi-GPU kinds) and, where deepspeed is not importable, the wheels
# of benchmarks/gpu/make_wheels.sh (carried as .whl) installed into a temporary site.
export TORCH_CUDA_ARCH_LIST=9.0 NCCL_NVLS_ENABLE=0 PYTHONUNBUFFERED=1
if ls .whl/*.whl >/dev/null 2>&1 && ! python3 -c "import deepspeed" 2>/dev/null; then
  SITE=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH=$SITE:$PWD PATH=$SITE/bin:$PATH
fi
