"""tools/inspect_data.py on a good and a truncated dataset."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_inspect_data_reports_and_detects_corruption(tmp_path, small_prefix, tokenizer_path):
    ok = subprocess.run([sys.executable, "tools/inspect_data.py", small_prefix, "--tokenizer-model",
                         tokenizer_path, "--show", "1", "--samples", "1", "--seq-length", "64"],
                        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "documents        900" in ok.stdout and "--- sample 0 (65 tokens" in ok.stdout
    broken = tmp_path / "broken"
    for ext in (".bin", ".idx"):
        data = open(small_prefix + ext, "rb").read()
        open(str(broken) + ext, "wb").write(data[:-100] if ext == ".bin" else data)
    bad = subprocess.run([sys.executable, "tools/inspect_data.py", str(broken)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 1 and "broken.bin is truncated" in bad.stderr
