"""benchmarks/diagnostics/bench_tp_path.py on a CPU: the tensor-parallel path of size 1 computes the
plain model, and only the traced compile keeps the blocks whole.

Tiny widths, the 1.3B lowrank config's 24 blocks and sequence parallelism, gloo on one rank.
"""
import json
import sys

import pytest

from tests import background
from tests.benchmarks.common import start

pytestmark = pytest.mark.slow

TINY = ["model.hidden_size=64", "model.ffn_hidden_size=256", "model.ffn.rank=16", "model.seq_length=16",
        "model.num_heads=4", "model.num_kv_heads=4"]
SCRIPT = [sys.executable, "benchmarks/diagnostics/bench_tp_path.py"]
BAD_FLAGS = [
    (["--emulate", "1"], "--emulate takes the tensor size"),
    (["--emulate", "2", "--tensor-parallel", "2"], "leave --tensor-parallel at 1"),
    (["--emulate", "2", "--modes", "tp-eager-nocomm"], "tp-eager-nocomm"),
    (["--inductor-config", "no_such_setting=1"], "torch._inductor.config setting"),
    (["--inductor-config", "combo_kernels=yes please"], "not a Python literal"),
]


@pytest.fixture(scope="module")
def commands(request, tmp_path_factory):
    """The selected tests' commands, started at once (two at a time: tests/background.py), each in the
    folder its test reads: {name: (folder, future of its CompletedProcess)}. The commands are
    independent; each test checks its own as before."""
    started = {}
    wanted = background.selected_names(request)
    wanted_flags = background.selected_params(request, "case")
    test_of = {"one_rank": "test_tensor_path_of_one_rank_equals_plain_and_traced_compile_has_no_breaks",
               "tp2": "test_real_tensor_parallel_two_ranks_equal_plain_and_a_hang_is_reported",
               "nocomm": "test_nocomm_mode_drops_only_the_collectives_and_profile_shows_them",
               "emulated": "test_emulated_rank_holds_its_shards_and_the_bypass_is_what_compile_gives"}

    def begin(name, cmd, timeout, folder=None):
        if name.startswith("bad"):
            if int(name[3:]) not in wanted_flags:
                return None
        elif test_of[name.split("/")[0]] not in wanted:
            return None
        folder = folder or tmp_path_factory.mktemp(name.replace("/", "_"))
        started[name] = folder, start([a(folder) if callable(a) else a for a in cmd], timeout)
        return folder

    begin("one_rank", SCRIPT + ["--config", "configs/1p3b_lowrank.json", "--micro-batch-size", "2", "--steps", "2",
                                "--warmup", "1", "--modes", "plain-eager", "tp-split", "tp-traced", "--out",
                                lambda d: str(d / "tp_path.json")] + [f"--override={o}" for o in TINY], 600)
    tp2 = SCRIPT + ["--config", "configs/1p3b_lowrank.json", "--micro-batch-size", "2", "--steps", "2", "--warmup",
                    "1", "--tensor-parallel", "2"] + [f"--override={o}" for o in TINY]
    folder = begin("tp2", tp2 + ["--modes", "plain-eager", "tp-traced", "--out", lambda d: str(d / "tp2.json")], 600)
    begin("tp2/hung", tp2 + ["--modes", "tp-eager", "--case-timeout", "1", "--out", lambda d: str(d / "tp2_hung.json")],
          120, folder)
    begin("nocomm", SCRIPT + ["--config", "configs/1p3b_lowrank.json", "--micro-batch-size", "2", "--steps", "1",
                              "--warmup", "1", "--modes", "tp-eager", "tp-eager-nocomm", "--profile",
                              lambda d: str(d / "prof"), "--out", lambda d: str(d / "nocomm.json")]
          + [f"--override={o}" for o in TINY], 600)
    emulated = SCRIPT + ["--config", "configs/1p3b_lowrank.json", "--micro-batch-size", "2", "--steps", "2",
                         "--warmup", "1", "--emulate", "2"] + [f"--override={o}" for o in TINY]
    folder = begin("emulated", emulated + ["--modes", "plain-compiled", "tp-traced", "--profile",
                                           lambda d: str(d / "prof"), "--out", lambda d: str(d / "emulated.json")],
                   600)
    begin("emulated/kept", emulated + ["--modes", "tp-traced", "--keep-collective-autograd", "--out",
                                       lambda d: str(d / "kept.json")], 600, folder)
    for i, (argv, _) in enumerate(BAD_FLAGS):
        begin(f"bad{i}", SCRIPT + argv, 120)
    return started


def test_tensor_path_of_one_rank_equals_plain_and_traced_compile_has_no_breaks(commands):
    tmp_path, done = commands["one_rank"]
    out = tmp_path / "tp_path.json"
    done = done.result()
    assert done.returncode == 0, done.stderr[-3000:]
    assert "tp-traced" in done.stdout and "ms/block" in done.stdout  # the table
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"plain-eager", "tp-split", "tp-traced"}
    plain = rows["plain-eager"]["first_loss"]
    for mode in ("tp-split", "tp-traced"):
        assert rows[mode]["first_loss"] == pytest.approx(plain, rel=1e-5), mode
        assert rows[mode]["step_ms"] > 0 and rows[mode]["graphs"] > 0
    # the collectives outside the graphs break every block at each of them; traced, none
    assert rows["tp-split"]["graph_breaks"] >= 24
    assert rows["tp-traced"]["graph_breaks"] == 0


def test_real_tensor_parallel_two_ranks_equal_plain_and_a_hang_is_reported(commands):
    tmp_path, done = commands["tp2"]
    out = tmp_path / "tp2.json"
    done = done.result()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["tp-traced"]["tensor_parallel"] == 2 and rows["plain-eager"]["tensor_parallel"] == 1
    # tensor 2 with its real shards and collectives computes the plain model
    assert rows["tp-traced"]["first_loss"] == pytest.approx(rows["plain-eager"]["first_loss"], rel=1e-5)
    assert rows["tp-traced"]["graph_breaks"] == 0
    # the timed step that sees step 0's batch again (same weights) gives step 0's loss
    for row in rows.values():
        assert row["repeated_loss_max_drift"] <= 1e-5 * abs(row["first_loss"]), row
    # a mode that does not finish in --case-timeout is reported, not waited on forever
    # (its own --out file: it runs beside the first command)
    hung = commands["tp2/hung"][1].result()
    assert hung.returncode == 0 and "HUNG after 1 s" in hung.stdout
    row = json.loads((tmp_path / "tp2_hung.json").read_text())["rows"][0]
    assert row["hung"] is True
    # every rank's output comes back, with the Python stacks each dumped before it was killed
    assert "--- rank 0 ---" in row["output_tail"] and "--- rank 1 ---" in row["output_tail"]
    assert row["output_tail"].count('File "') >= 2


def test_nocomm_mode_drops_only_the_collectives_and_profile_shows_them(commands):
    tmp_path, done = commands["nocomm"]
    out, prof = tmp_path / "nocomm.json", tmp_path / "prof"
    done = done.result()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    # on one rank every collective is the identity: the same loss without them
    assert rows["tp-eager-nocomm"]["first_loss"] == pytest.approx(rows["tp-eager"]["first_loss"], rel=1e-6)
    # the profiles: the table by host time, and a timeline with the tensor group's collectives
    # on the TP path and none without them
    import gzip
    assert "aten::mm" in (prof / "tp-eager.txt").read_text()

    def collectives(mode):
        trace = json.loads(gzip.open(prof / f"{mode}.trace.json.gz").read())
        return sum(e.get("name", "").startswith("c10d::") for e in trace["traceEvents"])

    assert collectives("tp-eager") > 0 and collectives("tp-eager-nocomm") == 0


def test_emulated_rank_holds_its_shards_and_the_bypass_is_what_compile_gives(commands):
    """--emulate 2: rank 0 of a tensor group of two on the fake process group (its shards, the
    collectives moving nothing) beside the plain model; compiled, the functional collectives
    are called below autograd unless --keep-collective-autograd asks for torch's kernels."""
    tmp_path, done = commands["emulated"]
    out, kept = tmp_path / "emulated.json", tmp_path / "kept.json"
    done = done.result()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = {r["mode"]: r for r in json.loads(out.read_text())["rows"]}
    assert rows["tp-traced"]["tensor_parallel"] == 2 and rows["tp-traced"]["emulated"]
    assert rows["tp-traced"]["graph_breaks"] == 0 and rows["tp-traced"]["collective_autograd_bypassed"]
    # the Python profile beside torch's: where the host's time goes, function by function
    assert "tottime" in (tmp_path / "prof" / "tp-traced.python.txt").read_text()
    done = commands["emulated/kept"][1].result()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    row = json.loads(kept.read_text())["rows"][0]
    assert row["collective_autograd_bypassed"] is False and row["graph_breaks"] == 0


@pytest.mark.parametrize("case", range(len(BAD_FLAGS)), ids=[" ".join(argv) for argv, _ in BAD_FLAGS])
def test_bad_flags_are_one_line_before_any_work(commands, case):
    argv, message = BAD_FLAGS[case]
    done = commands[f"bad{case}"][1].result()
    assert done.returncode == 2 and message in done.stderr.strip().splitlines()[-1]
