"""The same training code starts under every launcher, with no code change (CPU, gloo).

The deepspeed runner with a multi-host hostfile ssh-es into each host and runs
`python -m deepspeed.launcher.launch --world_info=... --node_rank=i` there; the
multi-node test runs exactly those per-node commands side by side on this machine.
"""
import base64
import json
import os
import shutil
import subprocess
import sys

import pytest

from megatron_sffn.parallel.launch import free_port

from .launcher import ROOT

pytestmark = pytest.mark.slow

SCRIPT = "tests/distributed/workers/launch_check.py"


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PMI_RANK", "OMPI_COMM_WORLD_RANK"):
        env.pop(key, None)
    return env


def _run_side_by_side(name, out, env, timeout):
    """Start the commands of launch `name` side by side (their ports taken now), wait for each:
    [(exit code, output)]."""
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in _commands(name, out)]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    return [(p.returncode, log) for p, log in zip(procs, logs)]


def _finish(started, out):
    for code, log in started.result():
        assert code == 0, log[-5000:]
    return [json.load(open(os.path.join(out, name))) for name in sorted(os.listdir(out))]


def _check(ranks, world):
    assert [r["rank"] for r in ranks] == list(range(world))
    assert all(r["world"] == world and r["backend"] == "gloo" for r in ranks)
    assert [r["pipe_rank"] for r in ranks] == list(range(world))  # one pipeline over all ranks
    assert len({r["loss"] for r in ranks}) == 1  # the loss reaches every stage


def _executable(name):
    found = shutil.which(name) or os.path.join(os.path.dirname(sys.executable), name)
    assert os.path.exists(found), f"{name} not found (pip install -e '.[test]' provides it)"
    return found


def _commands(name, out):
    """The launch of one test (commands run side by side), its ranks writing into `out`."""
    if name == "deepspeed":
        return [[_executable("deepspeed"), "--num_accelerators", "2", "--master_port", str(free_port()),
                 SCRIPT, "--out", str(out)]]
    if name == "deepspeed_multi_node":
        world_info = base64.urlsafe_b64encode(json.dumps({"node-a": [0], "node-b": [0]}).encode()).decode()
        port = str(free_port())
        return [[sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
                 f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", SCRIPT,
                 "--out", str(out)] for node in (0, 1)]
    if name == "torchrun":
        return [[_executable("torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), SCRIPT,
                 "--out", str(out)]]
    if name == "mpirun":
        env_port = str(free_port())
        return [[_executable("mpiexec"), "-n", "2", "-env", "MASTER_PORT", env_port, sys.executable, SCRIPT,
                 "--out", str(out)]]
    assert name == "python"
    return [[sys.executable, SCRIPT, "--out", str(out)]]


LAUNCHES = {"test_deepspeed_launcher_single_node": "deepspeed",
            "test_deepspeed_multi_node_per_node_launch": "deepspeed_multi_node", "test_torchrun": "torchrun",
            "test_mpirun_discovers_ranks_through_mpi4py": "mpirun", "test_plain_python_is_a_world_of_one": "python"}


@pytest.fixture(scope="module")
def launches(request, tmp_path_factory):
    """The selected tests' launches, started at once (two at a time, tests/background.py; a launch's
    own commands always side by side): {name: (its --out folder, future of [(exit code, output)])}."""
    from tests import background
    started = {}
    wanted = background.selected_names(request)
    for test, name in LAUNCHES.items():
        if test in wanted:
            out = tmp_path_factory.mktemp(name)
            started[name] = out, background.submit(_run_side_by_side, name, out, _env(), 300)
    return started


def test_deepspeed_launcher_single_node(launches):
    out, started = launches["deepspeed"]
    _check(_finish(started, out), 2)


def test_deepspeed_multi_node_per_node_launch(launches):
    out, started = launches["deepspeed_multi_node"]
    ranks = _finish(started, out)
    _check(ranks, 2)
    assert [r["local_rank"] for r in ranks] == [0, 0]  # one process per "node"


def test_torchrun(launches):
    out, started = launches["torchrun"]
    _check(_finish(started, out), 2)


def test_mpirun_discovers_ranks_through_mpi4py(launches):
    out, started = launches["mpirun"]
    _check(_finish(started, out), 2)


def test_plain_python_is_a_world_of_one(launches):
    out, started = launches["python"]
    ranks = _finish(started, out)
    assert ranks[0]["world"] == 1 and ranks[0]["engine"] == "DeepSpeedEngine"
