"""tools/generate.py on a trained checkpoint: the same tokens with pre-merge on and off; --cuda-graphs on the CPU."""
import json
import os

import pytest

from tools.generate import main

from .common import ROOT, call

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("sampling", [["--temperature", 0], ["--temperature", 0.9, "--top-k", 50, "--top-p", 0.95]])
def test_same_tokens_with_pre_merge_on_and_off(consolidated4, tmp_path, capsys, sampling):
    tokens = {}
    for mode in ("on", "off"):
        path = tmp_path / f"{mode}.json"
        code, out, err = call(main, ["--load", consolidated4, "--prompt", "The history of", "--prompt", "Once",
                                     "--max-new-tokens", 12, "--seed", 3, "--pre-merge", mode, "--json", path,
                                     *sampling], capsys)
        assert code == 0, err
        result = json.load(open(path))
        tokens[mode] = result["tokens"]
        assert len(result["outputs"]) == 2 and f"pre-merge {mode}" in out
        assert ("always merged" in out) == (mode == "on") and str(1 << 62) not in out
    assert tokens["on"] == tokens["off"]
    assert all(len(t) == 12 or t[-1] == 2 for t in tokens["on"])  # max-new-tokens, or stopped at end of document


def test_generate_reports_a_bad_checkpoint(tmp_path, capsys):
    code, _, err = call(main, ["--load", tmp_path / "nope", "--prompt", "x"], capsys)
    assert code == 2 and "does not exist" in err


def test_cuda_graphs_flag_falls_back_to_eager_on_cpu(tmp_path, capsys):
    """--cuda-graphs on the CPU: one warning line, and the tokens of the eager run."""
    tokens = {}
    for flags in ([], ["--cuda-graphs"]):
        path = tmp_path / f"{len(flags)}.json"
        code, out, err = call(main, ["--config", os.path.join(ROOT, "configs", "tiny_demo.json"),
                                     "--tokenizer-model", "embedded", "--device", "cpu", "--dtype", "fp32",
                                     "--prompt", "The history of", "--prompt", "Once", "--max-new-tokens", 6,
                                     "--temperature", 0, "--json", path, *flags], capsys)
        assert code == 0, err
        tokens[len(flags)] = json.load(open(path))["tokens"]
        warnings = [line for line in err.splitlines() if "cuda-graphs" in line]
        assert len(warnings) == len(flags) and (not flags or "decoding eagerly" in warnings[0]), err
    assert tokens[1] == tokens[0]
