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


def _run(commands, out, timeout=300):
    procs = [subprocess.Popen(cmd, cwd=ROOT, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
             for cmd in commands]
    logs = [p.communicate(timeout=timeout)[0] for p in procs]
    for p, log in zip(procs, logs):
        assert p.returncode == 0, log[-5000:]
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


def test_deepspeed_launcher_single_node(tmp_path):
    cmd = [_executable("deepspeed"), "--num_accelerators", "2", "--master_port", str(free_port()),
           SCRIPT, "--out", str(tmp_path)]
    _check(_run([cmd], tmp_path), 2)


def test_deepspeed_multi_node_per_node_launch(tmp_path):
    world_info = base64.urlsafe_b64encode(json.dumps({"node-a": [0], "node-b": [0]}).encode()).decode()
    port = str(free_port())
    cmds = [[sys.executable, "-u", "-m", "deepspeed.launcher.launch", f"--world_info={world_info}",
             f"--node_rank={node}", "--master_addr=127.0.0.1", f"--master_port={port}", SCRIPT,
             "--out", str(tmp_path)] for node in (0, 1)]
    ranks = _run(cmds, tmp_path)
    _check(ranks, 2)
    assert [r["local_rank"] for r in ranks] == [0, 0]  # one process per "node"


def test_torchrun(tmp_path):
    cmd = [_executable("torchrun"), "--nproc_per_node", "2", "--master_port", str(free_port()), SCRIPT,
           "--out", str(tmp_path)]
    _check(_run([cmd], tmp_path), 2)


def test_mpirun_discovers_ranks_through_mpi4py(tmp_path):
    env_port = str(free_port())
    cmd = [_executable("mpiexec"), "-n", "2", "-env", "MASTER_PORT", env_port, sys.executable, SCRIPT,
           "--out", str(tmp_path)]
    _check(_run([cmd], tmp_path), 2)


def test_plain_python_is_a_world_of_one(tmp_path):
    ranks = _run([[sys.executable, SCRIPT, "--out", str(tmp_path)]], tmp_path)
    assert ranks[0]["world"] == 1 and ranks[0]["engine"] == "DeepSpeedEngine"
