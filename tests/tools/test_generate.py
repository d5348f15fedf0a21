"""tools/generate.py on a trained checkpoint: the same tokens with pre-merge on and off."""
import json

import pytest

from tools.generate import main

from .common import call

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
    assert tokens["on"] == tokens["off"]
    assert all(len(t) == 12 or t[-1] == 2 for t in tokens["on"])  # max-new-tokens, or stopped at end of document


def test_generate_reports_a_bad_checkpoint(tmp_path, capsys):
    code, _, err = call(main, ["--load", tmp_path / "nope", "--prompt", "x"], capsys)
    assert code == 2 and "does not exist" in err
