"""The README's commands work as written: the demo, the tools on the demo's checkpoint, the
Data example on the bundled corpus; and the TensorBoard tags it lists are the ones a run writes.

They run in a fresh folder that holds links to launchers/, tools/, configs/ and megatron_sffn/,
so every relative path means what it means in a clone, and what they write stays out of the
repository. The tools' commands run side by side where one does not read what another writes
(one per core; the deepspeed run alone). Two changes only, both to step counts: the demo trains 4 steps instead of 200 (its
checkpoint is past the guided phase all the same), and the resume after the reshape goes to
step 6 instead of 220 (20 more steps after the demo's 200, here 2 after its 4).
"""
import os
import re
import shlex
import shutil
import subprocess
import sys
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

import pytest

from .common import ROOT

pytestmark = pytest.mark.slow

README = os.path.join(ROOT, "README.md")
DEMO_STEPS = ["--train-steps", "4", "--eval-interval", "2", "--save-interval", "2", "--log-interval", "2"]


def section_blocks(title: str):
    """The ```bash blocks of the README section `title`, one command per (continued) line."""
    text = open(README).read()
    body = text.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", body, re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split("   # ")[0].strip()
            if line:
                commands.append(shlex.split(line))
    return commands


def clone(tmp_path):
    for name in ("launchers", "tools", "configs", "megatron_sffn"):
        os.symlink(os.path.join(ROOT, name), tmp_path / name)
    return tmp_path


def execute(argv, cwd):
    if argv[0] == "python":
        argv = [sys.executable] + argv[1:]
    elif argv[0] == "deepspeed":
        from megatron_sffn.parallel.launch import free_port
        argv = [shutil.which("deepspeed", path=os.path.dirname(sys.executable)) or "deepspeed",
                "--master_port", str(free_port())] + argv[1:]
    env = dict(os.environ, CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{shlex.join(argv)}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


def written_paths(argv):
    """The paths a tool command names as its output (--save, --json)."""
    return [argv[i + 1] for i, arg in enumerate(argv[:-1]) if arg in ("--save", "--json")]


def reads_what_it_wrote(later, earlier) -> bool:
    """`later` names a path `earlier` writes, or one inside it."""
    return any(arg == out or arg.startswith(out.rstrip("/") + "/") for arg in later for out in written_paths(earlier))


def execute_side_by_side(commands, cwd):
    """Every command, each once the earlier ones whose output it reads have finished, as many at
    a time as there are cores (the tools are one process each); a deepspeed command runs alone
    (its ranks take every core). Returns the outputs in the commands' order."""
    after = [{j for j in range(i) if reads_what_it_wrote(argv, commands[j])} for i, argv in enumerate(commands)]
    alone = [argv[0] == "deepspeed" for argv in commands]
    width = max(1, os.cpu_count() or 1)
    outputs, running = {}, {}
    with ThreadPoolExecutor(width) as pool:
        while len(outputs) < len(commands):
            for i, argv in enumerate(commands):
                ready = i not in outputs and i not in running and after[i] <= set(outputs)
                busy = len(running) >= width or any(alone[j] for j in running) or (alone[i] and running)
                if ready and not busy:
                    running[i] = pool.submit(execute, argv, cwd)
            finished, _ = wait(running.values(), return_when=FIRST_COMPLETED)
            for i in [i for i, future in running.items() if future in finished]:
                outputs[i] = running.pop(i).result()
    return [outputs[i] for i in range(len(commands))]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The README's demo command (4 steps), in a folder like a clone; returns (folder, output)."""
    cwd = clone(tmp_path_factory.mktemp("clone"))
    (command,) = section_blocks("Demo: train a small model on the bundled corpus")
    assert command[:4] == ["deepspeed", "--num_accelerators", "2", "launchers/pretrain.py"]
    return cwd, execute(command + DEMO_STEPS, cwd)


def test_the_tools_run_on_the_demos_checkpoint_as_written(demo):
    cwd, out = demo
    assert "done: 4 steps" in out
    commands = section_blocks("The tools, on the demo's checkpoint")
    assert len(commands) >= 7
    for argv in commands:
        if "--train-steps" in argv:   # 20 more steps than the demo's 200: here 2 more than its 4
            argv[argv.index("--train-steps") + 1] = "6"
    for argv, out in zip(commands, execute_side_by_side(commands, cwd)):
        if argv[0] == "deepspeed":
            assert "layout     world 2 = tensor 2 x pipeline 1 x data 1" in out and "resume     from" in out
            assert "done: 6 steps" in out
    assert os.path.isfile(cwd / "val.json") and os.path.isfile(cwd / "hf" / "tiny_demo" / "config.json")


def test_the_data_example_runs_on_the_bundled_corpus(tmp_path):
    cwd = clone(tmp_path)
    commands = section_blocks("Your own data")
    assert any("megatron_sffn/assets/corpus.jsonl.gz" in argv for argv in commands)
    for argv in commands:
        if argv[0] == "deepspeed":
            argv = argv + ["--train-steps", "2", "--eval-interval", "2", "--save-interval", "2"]
        out = execute(argv, cwd)
        if argv[0] == "deepspeed":
            assert f"data       {cwd / 'data' / 'corpus_text_document'} | tokenizer {cwd / 'data' / 'tok.model'}" in out


def listed_tags():
    text = open(README).read()
    sentence = text.split("Watch it with `tensorboard", 1)[1].split("each also against tokens", 1)[0]
    cpu, gpu = sentence.split("(on GPUs also", 1)
    return set(re.findall(r"`(\w+/\w+)`", cpu)), set(re.findall(r"`(\w+/\w+)`", gpu))


def test_the_tensorboard_tags_listed_are_the_ones_a_cpu_run_writes(demo):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    cwd, _ = demo
    events = EventAccumulator(str(cwd / "runs" / "tiny_demo" / "tensorboard"))
    events.Reload()
    written = set(events.Tags()["scalars"])
    cpu, gpu = listed_tags()
    assert {t for t in written if not t.endswith("_vs_tokens")} == cpu
    assert {f"{t}_vs_tokens" for t in cpu} <= written
    assert not gpu & written   # the GPU-only ones are named as such
    assert "config" in events.Tags()["tensors"] or "config" in str(events.Tags())
