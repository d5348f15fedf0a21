"""tools/inspect_checkpoint.py: step, tokens seen, layout, sizes, without loading tensors."""
import json

import pytest

from tools.inspect_checkpoint import main

from .common import call, synthetic_consolidated


@pytest.mark.slow
def test_run_folder_and_consolidated(run22, consolidated2, capsys):
    code, out, _ = call(main, [run22, "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["kind"] == "deepspeed" and info["step"] == 4 and info["consumed_tokens"] == 1024
    assert info["layout"] == {"tensor": 2, "pipeline": 2, "data": 1, "zero_stage": 1, "optimizer": "deepspeed"}
    assert [t["tag"] for t in info["tags"]] == ["step00000002", "step00000004"]
    assert info["self_guided"]["guides_dropped"] is True and info["bytes"] > 0
    code, out, _ = call(main, [consolidated2], capsys)
    assert code == 0 and "tokens seen  512" in out and "guides present" in out and "Adam step 2" in out


def test_consolidated_counts_parameters_from_the_header(tmp_path, capsys):
    cfg = synthetic_consolidated(str(tmp_path / "c"))
    from megatron_sffn.model import GPTModel
    expected = sum(p.numel() for p in GPTModel(cfg.model).parameters())
    code, out, _ = call(main, [tmp_path / "c", "--json"], capsys)
    info = json.loads(out)
    assert code == 0 and info["parameters"] == expected and info["has_optimizer"] and info["step"] == 3


def test_missing_checkpoint(tmp_path, capsys):
    code, _, err = call(main, [tmp_path / "nope"], capsys)
    assert code == 2 and "does not exist" in err
