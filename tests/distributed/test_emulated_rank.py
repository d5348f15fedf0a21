"""One rank emulated alone on torch's fake process group holds what the real rank holds.

tools/emulate_rank.py (bench_train.py --emulate) measures a layout's memory per GPU on
one device by running a single rank of it; that is only worth something if the emulated
rank builds the same shards, the same ZeRO partition and keeps the same activations for
backward as that rank of a real world. Real: 4 gloo ranks; emulated: one process per
checked rank, no peers (those run side by side, one per core).
"""
import os
import tempfile

import pytest
import torch

from tests import preloaded

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


# the same rank without sequence parallelism: what the emulation must see SP save
WITHOUT_SP = (["--tensor", "2", "--precision", "fp32"], 0)


def emulate_command(flags, rank: int, tag: str, out: str) -> list:
    return [WORKER, *flags, "--emulate-world", "4", "--emulate-rank", str(rank), "--tag", tag, "--out", out]


def run_side_by_side(commands) -> None:
    """Run single-rank processes (`python script args`, one thread each), as many at a time as
    there are cores: they share nothing, so on 2 cores a pair takes the time of one."""
    env = worker_env(0, 1, 0)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key)
    pending, width = list(commands), max(1, os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as tmp:
        while pending:
            batch, pending = pending[:width], pending[width:]
            logs = [os.path.join(tmp, f"{len(pending)}-{i}.log") for i in range(len(batch))]
            procs = [preloaded.start(cmd[0], cmd[1:], env, ROOT, log) for cmd, log in zip(batch, logs)]
            try:
                for proc in procs:
                    proc.wait(timeout=600)
            finally:
                for proc in procs:
                    if proc.poll() is None:
                        proc.kill()
                        proc.wait()
            for cmd, proc, log in zip(batch, procs, logs):
                with open(log) as f:
                    assert proc.returncode == 0, f"{' '.join(cmd)}:\n{f.read()[-6000:]}"


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Every real world (4 gloo ranks, one after another), then every emulated rank side by side:
    ({layout: [(real record, emulated record) per emulated rank]}, the rank emulated without SP)."""
    outs = {name: str(tmp_path_factory.mktemp(name)) for name in LAYOUTS}
    for name, (flags, _) in LAYOUTS.items():
        run_ranks(4, WORKER, [*flags, "--tag", "real"], outs[name])
    without_sp = str(tmp_path_factory.mktemp("tp2_dp2"))
    run_side_by_side([emulate_command(flags, rank, "emulated", outs[name])
                      for name, (flags, ranks) in LAYOUTS.items() for rank in ranks]
                     + [emulate_command(WITHOUT_SP[0], WITHOUT_SP[1], "tp2_dp2", without_sp)])
    load = lambda out, tag, r: torch.load(os.path.join(out, f"{tag}_rank{r}.pt"))  # noqa: E731
    found = {name: [(load(outs[name], "real", r), load(outs[name], "emulated", r)) for r in ranks]
             for name, (_, ranks) in LAYOUTS.items()}
    return found, load(without_sp, "tp2_dp2", WITHOUT_SP[1])


@pytest.fixture(scope="module")
def inventories(records):
    """{layout: [(real record, emulated record) per emulated rank]}"""
    return records[0]


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


def test_emulation_sees_what_sequence_parallelism_saves(records):
    """The measure discriminates: the same rank without sequence parallelism keeps more for
    backward (replicated d-wide activations), with parameters of the same shapes."""
    inventories, tp2_dp2 = records
    pairs = [(tp2_dp2, inventories["tp2sp_dp2"][0][1]),
             (inventories["tp2pp2"][0][1], inventories["tp2pp2sp"][0][1])]
    for without, with_sp in pairs:
        assert [p[1] for p in without["params"]] == [p[1] for p in with_sp["params"]]
        assert without["saved"] > with_sp["saved"] * 1.05, (without["saved"], with_sp["saved"])
