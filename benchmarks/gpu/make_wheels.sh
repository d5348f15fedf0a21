#!/usr/bin/env bash
# Wheels the lent GPU machines lack, into ./.whl (git-ignored through .git/info/exclude):
# deepspeed (published as an sdist only, so built here as a pure-Python wheel; a plain
# `pip download --only-binary` finds just an ancient 0.3.1 wheel) and its small deps, and pytest.
# benchmarks/gpu/setup_env.sh (sourced by run.sh for every suite) installs them where deepspeed is missing:
#   SITE=$(mktemp -d); python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
#       --upgrade --target $SITE .whl/*.whl && export PYTHONPATH=$SITE:$PWD PATH=$SITE/bin:$PATH
#   export TORCH_CUDA_ARCH_LIST=9.0
set -eu
mkdir -p .whl .git/info
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
rm -f .whl/*.whl
DS_BUILD_OPS=0 python3 -m pip wheel -q --no-deps "deepspeed==${DEEPSPEED_VERSION:-0.19.8}" -w .whl
plat="--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp $plat \
  -d .whl hjson pydantic==2.14.3 pydantic-core==2.50.4 annotated-types typing-inspection typing_extensions==4.16.0
# pytest, for the GPU-only tests (tests/unit/test_cuda_graph.py, the Triton kernel tests)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 -d .whl pytest pluggy iniconfig packaging pygments
ls -1 .whl
