"""benchmarks/gpu/run.sh, the one entry point of the GPU suites, on a CPU: it lists every suite,
refuses an unknown suite (or a suite's unknown case) with one line, every suite parses as bash, and
every script a suite runs exists (the suites cannot be run here: they need GPUs). And every script
of benchmarks/ and benchmarks/diagnostics/ has a test."""
import json
import os
import re
import shutil
import subprocess

import pytest

from tests.e2e.runs import ROOT

GPU = os.path.join(ROOT, "benchmarks", "gpu")
RUN = os.path.join(GPU, "run.sh")
SUITES = sorted(f[:-3] for f in os.listdir(os.path.join(GPU, "suites")) if f.endswith(".sh"))
SHELL_FILES = [RUN, os.path.join(GPU, "setup_env.sh")] + [os.path.join(GPU, "suites", s + ".sh") for s in SUITES]
# a Python script a suite runs: `python3 [-u] PATH.py`, or the script emulate_rank.py runs after `--`
SCRIPT = re.compile(r"\bpython3?\s+(?:-u\s+)?((?:[\w.-]+/)*[\w.-]+\.py)\b|--\s+((?:[\w.-]+/)+[\w.-]+\.py)\b")
PYTEST_FILE = re.compile(r"-m pytest\b[^\n]*?\s(tests/[\w/.-]+\.py)")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


def _run(*args, **env):
    return subprocess.run(["bash", RUN, *args], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env=dict(os.environ, **env))


def test_there_are_a_few_suites():
    assert set(SUITES) >= {"reference", "train", "decode", "emulated", "tp", "scale", "sweep"}
    assert len(SUITES) <= 10


def test_without_arguments_it_lists_every_suite_with_its_line():
    proc = _run()
    assert proc.returncode == 0, proc.stderr
    for suite in SUITES:
        first = open(os.path.join(GPU, "suites", suite + ".sh")).readline().lstrip("# ").strip()
        assert re.search(rf"^\s+{suite}\s+{re.escape(first)}$", proc.stdout, re.M), (suite, proc.stdout)


def test_an_unknown_suite_is_refused_with_one_line(tmp_path):
    proc = _run("no_such_suite", str(tmp_path / "out"))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "unknown suite 'no_such_suite'" in proc.stderr, proc.stderr
    assert all(s in proc.stderr for s in SUITES) and proc.stdout == ""
    assert not (tmp_path / "out").exists()


def test_a_suite_without_an_output_folder_is_refused_with_one_line():
    proc = _run("train")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "OUT" in proc.stderr, proc.stderr


@pytest.mark.parametrize("suite, args", [("train", ["no_such_case"]), ("decode", ["no_such_case"]),
                                         ("tp", ["no_such_case"]), ("scale", ["no_such_case"]),
                                         ("emulated", ["no_such_case"]), ("reference", ["no_such_kind"]),
                                         ("sweep", ["unexpected"]), ("fp8", ["no_such_case"])])
def test_a_suites_unknown_case_is_refused_with_one_line(tmp_path, suite, args):
    proc = _run(suite, str(tmp_path / "out"), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and args[0] in errors[0], proc.stderr


@pytest.mark.parametrize("path", SHELL_FILES, ids=os.path.basename)
def test_every_suite_parses(path):
    proc = subprocess.run(["bash", "-n", path], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_every_script_a_suite_runs_exists():
    found = {}
    for path in SHELL_FILES:
        text = open(path).read()
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        for match in SCRIPT.finditer(code):
            found.setdefault(match.group(1) or match.group(2), os.path.basename(path))
        for match in PYTEST_FILE.finditer(code):
            found.setdefault(match.group(1), os.path.basename(path))
    assert len(found) >= 8, found   # the parse finds the suites' commands
    missing = {script: suite for script, suite in found.items() if not os.path.isfile(os.path.join(ROOT, script))}
    assert not missing, f"scripts the suites run that do not exist: {missing}"


def test_a_suite_that_calls_run_sh_names_an_existing_suite():
    for path in SHELL_FILES:
        code = "\n".join(line for line in open(path).read().splitlines() if not line.lstrip().startswith("#"))
        for suite in re.findall(r"benchmarks/gpu/run\.sh\s+([a-z]\w*)", code):
            assert suite in SUITES, (os.path.basename(path), suite)


def test_every_benchmark_and_diagnostic_has_a_test():
    """A script in benchmarks/ or benchmarks/diagnostics/ is named by some test under tests/."""
    tests = ""
    for dirpath, _, filenames in os.walk(os.path.join(ROOT, "tests")):
        tests += "".join(open(os.path.join(dirpath, f)).read() for f in filenames if f.endswith(".py"))
    scripts = [f for folder in ("benchmarks", "benchmarks/diagnostics")
               for f in os.listdir(os.path.join(ROOT, folder)) if f.endswith(".py")]
    untested = sorted(f for f in scripts if f[:-3] not in tests)
    assert not untested, f"benchmark scripts no test names: {untested}"


def test_the_reference_suites_fp8_ledger_puts_our_side_in_fp8_and_a_wrong_name_is_refused(tmp_path):
    """LEDGER_CONFIGS=dense_fp8keep: the dense ledger with training.fp8.enabled and keep_casts on our
    side only (SMOKE=1: bench_ledger's tiny model on this CPU; NAME_fp8 leaves keep_casts out); an
    entry that names no config stops before any run."""
    bad = _run("reference", str(tmp_path / "bad"), "ledger", LEDGER_CONFIGS="dense_fp9")
    assert bad.returncode == 2 and "'dense_fp9'" in bad.stderr and not list((tmp_path / "bad").rglob("ledger_*"))
    out = tmp_path / "out"
    proc = subprocess.run(["bash", RUN, "reference", str(out), "ledger"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600, env=dict(os.environ, SMOKE="1", LEDGER_CONFIGS="dense_fp8keep"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    data = json.loads((out / "ledger_dense_fp8keep.json").read_text())
    assert data["args"]["override"] == ["training.fp8.enabled=true", "training.fp8.keep_casts=true"]
    (result,) = data["results"]
    assert result["ours"]["precision"] == "bf16, FP8 GEMMs" and result["reference"]["precision"] == "bf16 autocast"
    assert "FP8 GEMMs" in (out / "ledger_dense_fp8keep.txt").read_text()


def test_the_fp8_suite_splits_each_product_and_runs_the_gpu_tests(tmp_path):
    """SMOKE=1 on the CPU: `products` writes bench_fp8's table with every case's kernel split per side,
    `tests` runs tests/unit/test_fp8_gpu.py, whose GPU cases skip here and say so, `speed` runs
    the base and the FP8 variant beside the reference, `keep_casts` FP8 with and without the kept casts."""
    out = tmp_path / "out"
    proc = subprocess.run(["bash", RUN, "fp8", str(out), "products", "tests", "speed", "keep_casts"], cwd=ROOT,
                          capture_output=True, text=True, timeout=600, env=dict(os.environ, SMOKE="1"))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = json.load(open(out / "fp8_products.json"))["rows"]
    assert rows and all(set(r["kernel_ms"]) == {"bf16", "tensorwise", "rowwise"} for r in rows)
    assert "kernel ms per call" in proc.stdout
    log = (out / "fp8_gpu_tests.log").read_text()
    assert "skipped" in log and "SKIPPED" in log, log
    speed = json.load(open(out / "reference_fp8_1p3b.json"))["results"]
    assert {r["variant"] for r in speed} == {"base", "fp8"} and all(r["vs_reference"] for r in speed)
    kept = {r["variant"]: r["overrides"] for r in json.load(open(out / "keep_casts_fp8_1p3b.json"))["results"]}
    assert set(kept) == {"base", "fp8", "fp8keep"} and "training.fp8.keep_casts=true" in kept["fp8keep"]
