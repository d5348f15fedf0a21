"""--profile: torch.profiler over a step range, written per rank into <run_dir>/profile.

A real launcher run on CPU ranks (gloo): the listed rank alone writes a trace that names each
profiled step and a table whose first line gives the steps' wall time; a run that ends inside the
range still writes what it recorded; the banner says what is profiled and where.
"""
import json
import os

from tests.e2e.runs import TINY, run

NO_GUIDES = ["--override", "self_guided.enabled=false"]


def _trace_steps(path):
    with open(path) as f:
        events = json.load(f)["traceEvents"]
    return sorted({e["name"] for e in events if str(e.get("name", "")).startswith("train step ")})


def test_the_listed_rank_writes_a_trace_and_a_table_of_its_profiled_steps(tmp_path):
    run_dir = str(tmp_path / "run")
    out = run(2, TINY + NO_GUIDES + ["--run-dir", run_dir, "--train-steps", "4", "--profile",
                                     "--profile-step-start", "2", "--profile-step-end", "4", "--profile-ranks", "1"],
              str(tmp_path / "logs"))
    folder = os.path.join(run_dir, "profile")
    assert f"profile    steps 2-3 on rank 1 -> {folder}" in out
    assert sorted(os.listdir(folder)) == ["rank1_steps2-3.pt.trace.json", "rank1_steps2-3.txt"]  # rank 0 wrote none
    assert _trace_steps(os.path.join(folder, "rank1_steps2-3.pt.trace.json")) == ["train step 2", "train step 3"]
    with open(os.path.join(folder, "rank1_steps2-3.txt")) as f:
        head, table = f.readline(), f.read()
    assert head.startswith("rank 1, steps 2-3: wall ") and "ms per step" in head
    assert "aten::mm" in table and "train step 2" in table


def test_a_run_that_ends_inside_the_range_writes_what_it_recorded(tmp_path):
    run_dir = str(tmp_path / "run")
    run(1, TINY + NO_GUIDES + ["--run-dir", run_dir, "--train-steps", "3", "--no-save", "--profile",
                               "--profile-step-start", "2", "--profile-step-end", "10"], str(tmp_path / "logs"))
    trace = os.path.join(run_dir, "profile", "rank0_steps2-3.pt.trace.json")
    assert _trace_steps(trace) == ["train step 2", "train step 3"]
