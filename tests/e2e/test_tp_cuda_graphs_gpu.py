"""CUDA graphs under tensor parallelism, split at the collectives (GPU only; skipped on a CPU).

An emulated rank of TP2 SP (tools/emulate_rank.py: the collectives move nothing, so both runs
compute the same function) trains the tiny model compiled, once plainly and once with its blocks
replayed as CUDA graphs split at the tensor-parallel collectives: Inductor's code has graph
partitions, the collectives are called outside them, and the losses are the plain run's."""
import json
import os
import subprocess
import sys

import pytest
import torch

from tests.e2e.runs import ROOT

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")

MODEL = ["model.hidden_size=64", "model.num_layers=2", "model.num_heads=4", "model.ffn_hidden_size=256",
         "model.seq_length=64", "model.vocab_size=512", "model.ffn.rank=16", "self_guided.enabled=false",
         "training.precision=bf16", "training.compile=true", "training.micro_batch_size=2",
         "training.global_batch_size=4", "parallel.tensor=2", "parallel.sequence_parallel=true"]


def _run(tmp_path, name: str, graphs: bool):
    out = tmp_path / f"{name}.json"
    overrides = [arg for o in MODEL + [f"training.cuda_graphs={'true' if graphs else 'false'}"]
                 for arg in ("--override", o)]
    env = dict(os.environ, MEGATRON_SFFN_EXPERIMENTAL_TP_CUDA_GRAPHS="split", TORCH_LOGS="output_code")
    proc = subprocess.run([sys.executable, "tools/emulate_rank.py", "--world", "2", "--",
                           "benchmarks/bench_scaling.py", "--config", "configs/tiny_demo.json", *overrides,
                           "--steps", "4", "--warmup", "2", "--out", str(out)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(out.read_text()), proc.stderr


def test_graphs_split_at_the_collectives_train_like_the_compiled_blocks(tmp_path):
    plain, _ = _run(tmp_path, "plain", graphs=False)
    split, code = _run(tmp_path, "split", graphs=True)
    assert "def partition_0(" in code and "def partition_1(" in code
    assert "_c10d_functional.all_gather_into_tensor" in code and "_c10d_functional.reduce_scatter_tensor" in code
    for a, b in zip(plain["loss_first_last"], split["loss_first_last"]):
        assert b == pytest.approx(a, rel=2e-3)
