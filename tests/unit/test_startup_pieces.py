"""Pieces of the launcher's start-up: which rank prints an early error, the per-installation
torch-extensions folder, and the start-up watch's lines while a JIT op builds."""
import os
import subprocess
import sys
import time

import pytest

from megatron_sffn.parallel import jit_cache
from megatron_sffn.training import early_errors
from megatron_sffn.training.startup_watch import StartupWatch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LAUNCH_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK",
              "OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")


@pytest.fixture
def launch_env(monkeypatch):
    for key in LAUNCH_ENV:
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setattr(early_errors, "SILENT_RANK_GRACE_S", 0.3)
    return monkeypatch


def test_rank_0_reports_and_its_neighbours_stay_silent(launch_env, capsys):
    assert early_errors.reports_errors()                        # started alone
    launch_env.setenv("MASTER_ADDR", "127.0.0.1")
    for rank, local, reports in ((0, 0, True), (1, 1, False), (2, 0, False)):
        launch_env.setenv("RANK", str(rank))
        launch_env.setenv("LOCAL_RANK", str(local))
        assert early_errors.reports_errors() is reports, rank
    started = time.monotonic()
    early_errors.report("config key 'x' is wrong")
    assert capsys.readouterr().err == ""
    assert time.monotonic() - started >= 0.3     # a silent rank leaves rank 0 time to print before it exits
    launch_env.setenv("RANK", "0")
    early_errors.report("config key 'x' is wrong")
    assert capsys.readouterr().err == "error: config key 'x' is wrong\n"


def test_the_first_rank_of_another_machine_reports_too(launch_env, capsys):
    """A file present on rank 0's machine but not on this one must not fail silently."""
    launch_env.setenv("MASTER_ADDR", "192.0.2.7")               # TEST-NET: never this machine
    launch_env.setenv("RANK", "8")
    launch_env.setenv("LOCAL_RANK", "0")
    assert early_errors.reports_errors()
    early_errors.report("dataset file d.bin not found")
    assert capsys.readouterr().err.startswith("error: dataset file d.bin not found (rank 8 on ")
    launch_env.setenv("LOCAL_RANK", "1")
    assert not early_errors.reports_errors()


def test_each_installation_gets_its_own_extensions_folder(monkeypatch):
    key = jit_cache.installation_key("/venv-a/torch", "2.13.0", "/venv-a/deepspeed", "0.19.8")
    assert key == jit_cache.installation_key("/venv-a/torch", "2.13.0", "/venv-a/deepspeed", "0.19.8")
    assert key != jit_cache.installation_key("/venv-b/torch", "2.13.0", "/venv-b/deepspeed", "0.19.8")
    assert key != jit_cache.installation_key("/venv-a/torch", "2.13.1", "/venv-a/deepspeed", "0.19.8")
    monkeypatch.delenv("TORCH_EXTENSIONS_DIR", raising=False)
    folder = jit_cache.use_installation_extensions_dir()
    assert os.environ["TORCH_EXTENSIONS_DIR"] == folder == jit_cache.extensions_dir()
    assert os.path.basename(folder).startswith(f"py{sys.version_info.major}{sys.version_info.minor}")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", "/chosen/by/the/user")
    assert jit_cache.use_installation_extensions_dir() == "/chosen/by/the/user"


def test_another_python_installation_gets_another_folder(tmp_path):
    """The key follows the interpreter's own torch and DeepSpeed: a process that finds DeepSpeed
    elsewhere (another venv) names another folder, so it never overwrites this one's build."""
    fake = tmp_path / "deepspeed"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    code = "from megatron_sffn.parallel.jit_cache import extensions_dir; print(extensions_dir())"
    env = {k: v for k, v in os.environ.items() if k != "TORCH_EXTENSIONS_DIR"}
    here = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=ROOT), capture_output=True,
                          text=True, check=True).stdout.strip()
    other = subprocess.run([sys.executable, "-c", code], env=dict(env, PYTHONPATH=f"{tmp_path}{os.pathsep}{ROOT}"),
                           capture_output=True, text=True, check=True).stdout.strip()
    assert here != other and os.path.dirname(here) == os.path.dirname(other)


def _jit_compile(name, build_directory, seconds):   # named as torch's own: the watch finds it by name
    time.sleep(seconds)


def test_a_jit_build_is_reported_as_a_sentence_naming_the_op_and_its_folder(capfd):
    watch = StartupWatch(rank=0, report_after_s=0.2).start()
    try:
        with watch.phase("the rendezvous of 2 ranks at 127.0.0.1:1234 (MASTER_ADDR:MASTER_PORT)",
                         "is every rank started, and can each reach that address?"):
            _jit_compile("deepspeed_shm_comm", "/cache/torch_extensions/py311_cpu_k/deepspeed_shm_comm", 1.0)
    finally:
        watch.close()
    (line,) = capfd.readouterr().err.strip().splitlines()
    assert line == ("[start-up] rank 0: building the JIT op 'deepspeed_shm_comm' (0 s so far) on the way to the "
                    "rendezvous of 2 ranks at 127.0.0.1:1234 (MASTER_ADDR:MASTER_PORT); it is built once per "
                    "installation and kept in /cache/torch_extensions/py311_cpu_k for later runs")
