"""experiments/sweep/bundle.py: the runs' logs travel as one tarball without checkpoints or runs
still going, and unpacking it replaces the local folders of the same runs."""
import os
import tarfile

from experiments.sweep import bundle, launch


def make_run(root, name, status, checkpoint=False):
    run = root / name
    launch.save_record(str(run), {"name": name, "status": status})
    (run / "train.log").write_text(f"{name} log\n")
    (run / "tensorboard").mkdir()
    (run / "tensorboard" / "events.out.tfevents.1").write_bytes(b"events")
    if checkpoint:
        (run / "checkpoints" / "step1").mkdir(parents=True)
        (run / "checkpoints" / "step1" / "model.pt").write_bytes(b"0" * 4096)
    return run


def test_pack_keeps_logs_of_ended_runs_only(tmp_path):
    runs = tmp_path / "runs"
    make_run(runs, "done", "ok", checkpoint=True)
    make_run(runs, "stopped", "stopped")
    make_run(runs, "going", "running")
    (runs / "environment.json").write_text("{}")
    (runs / "data.json").write_text("{}")
    tar_path = str(tmp_path / "out" / "sweep_runs.tar.gz")
    assert bundle.pack(str(runs), tar_path) == ["done", "stopped"]
    names = set(tarfile.open(tar_path).getnames())
    assert {"done/train.log", "done/sweep_record.json", "done/tensorboard/events.out.tfevents.1",
            "stopped/train.log", "environment.json", "data.json"} <= names
    assert not any("checkpoints" in n or n.startswith("going") for n in names)


def test_unpack_replaces_local_folders_of_the_same_runs(tmp_path):
    src = tmp_path / "src"
    make_run(src, "done", "ok")
    tar_path = str(tmp_path / "b.tar.gz")
    bundle.pack(str(src), tar_path)
    dst = tmp_path / "dst"
    make_run(dst, "done", "running")
    (dst / "done" / "stale.txt").write_text("left by an interrupted run")
    make_run(dst, "other", "ok")
    assert bundle.unpack(tar_path, str(dst)) == ["done"]
    assert launch.read_record(str(dst / "done"))["status"] == "ok"
    assert not os.path.exists(dst / "done" / "stale.txt")
    assert launch.read_record(str(dst / "other"))["status"] == "ok"
