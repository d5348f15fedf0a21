"""One rank emulated alone on torch's fake process group holds what the real rank holds.

tools/emulate_rank.py (bench_train.py --emulate) measures a layout's memory per GPU on
one device by running a single rank of it; that is only worth something if the emulated
rank builds the same shards, the same ZeRO partition and keeps the same activations for
backward as that rank of a real world. Real: 4 gloo ranks; emulated: one process per
checked rank, no peers.
"""
import os
import subprocess
import sys

import pytest
import torch

from .launcher import ROOT, run_ranks, worker_env

pytestmark = pytest.mark.slow

WORKER = "tests/distributed/workers/rank_inventory.py"
LAYOUTS = {
    # name: (worker flags, ranks emulated: the first; the last data-parallel rank's ZeRO shard)
    "tp2sp_dp2": (["--tensor", "2", "--sequence-parallel", "--precision", "fp32"], (0, 3)),
    # rank 2 is the second stage: nobody sends it the shape of its input, the module's
    # boundary_shape gives it (emulate_rank.stage_inputs_from_the_model); it holds the head and loss
    "tp2pp2sp": (["--tensor", "2", "--pipe", "2", "--sequence-parallel", "--precision", "bf16fused"], (0, 2)),
    # without SP DeepSpeed partitions the activations between stages, and the gradient comes back
    # partitioned: the emulation fills in its layout (emulate_rank.partition_layout_from_own_output)
    "tp2pp2": (["--tensor", "2", "--pipe", "2", "--precision", "bf16fused"], (0, 2)),
}


def emulate(flags, rank: int, tag: str, out: str) -> None:
    env = worker_env(0, 1, 0)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key)
    proc = subprocess.run([sys.executable, WORKER, *flags, "--emulate-world", "4", "--emulate-rank", str(rank),
                           "--tag", tag, "--out", out], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="module")
def inventories(tmp_path_factory):
    """{layout: [(real record, emulated record) per emulated rank]}"""
    found = {}
    for name, (flags, ranks) in LAYOUTS.items():
        out = str(tmp_path_factory.mktemp(name))
        run_ranks(4, WORKER, [*flags, "--tag", "real"], out)
        for rank in ranks:
            emulate(flags, rank, "emulated", out)
        load = lambda tag, r: torch.load(os.path.join(out, f"{tag}_rank{r}.pt"))  # noqa: E731
        found[name] = [(load("real", r), load("emulated", r)) for r in ranks]
    return found


def test_emulated_rank_holds_the_real_ranks_shards_and_activations(inventories):
    assert set(inventories) == set(LAYOUTS)
    for name, pairs in inventories.items():
        for real, emulated in pairs:
            where = (name, real["rank"])
            assert emulated["rank"] == real["rank"] and emulated["pipe_rank"] == real["pipe_rank"], where
            assert emulated["params"] == real["params"], where
            assert emulated["optimizer"] == real["optimizer"], where
            assert real["saved"] > 0 and emulated["saved"] == real["saved"], (where, real["saved"], emulated["saved"])
            assert real["finite"] and emulated["finite"], where
    # the stages hold different pieces (embedding and first blocks, last blocks and head)
    for name in ("tp2pp2sp", "tp2pp2"):
        (stage0, _), (stage1, _) = inventories[name]
        assert stage0["pipe_rank"] == 0 and stage1["pipe_rank"] == 1
        assert stage0["params"] != stage1["params"] and stage0["saved"] != stage1["saved"], name


def test_emulation_sees_what_sequence_parallelism_saves(inventories, tmp_path):
    """The measure discriminates: the same rank without sequence parallelism keeps more for
    backward (replicated d-wide activations), with parameters of the same shapes."""
    emulate(["--tensor", "2", "--precision", "fp32"], 0, "tp2_dp2", str(tmp_path))
    pairs = [(torch.load(tmp_path / "tp2_dp2_rank0.pt"), inventories["tp2sp_dp2"][0][1]),
             (inventories["tp2pp2"][0][1], inventories["tp2pp2sp"][0][1])]
    for without, with_sp in pairs:
        assert [p[1] for p in without["params"]] == [p[1] for p in with_sp["params"]]
        assert without["saved"] > with_sp["saved"] * 1.05, (without["saved"], with_sp["saved"])
