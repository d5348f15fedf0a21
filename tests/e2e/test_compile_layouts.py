"""--compile under tensor parallelism (with sequence parallelism) and pipeline parallelism.

Self-guided lowrank (tiny_demo): two compiled guided steps, the guide drop and its rebuilt,
recompiled engine, two more steps. Each compiled run must train like the eager
data-parallel run of the same model and data
(fp32 on CPU: every step's loss to 1e-5): the collectives traced into the compiled graphs
(parallel/collectives.py), or kept outside them (training.trace_collectives = false, the
fallback), and the per-function recompile limit holds every graph a block needs
(model/compile.py), so no piece silently falls back to eager after the limit.
"""
import os

import pytest

from megatron_sffn.training.metrics import read_step_log

from .runs import TINY, losses, run

pytestmark = pytest.mark.slow

STEPS = 4
COMMON = TINY + ["--train-steps", str(STEPS), "--eval-interval", str(STEPS), "--save-interval", "100",
                 "--no-save"]  # tiny_demo: self-guided, the guides dropped within the run


@pytest.fixture(scope="module")
def eager_losses(tmp_path_factory):
    run_dir = str(tmp_path_factory.mktemp("eager"))
    run(2, COMMON + ["--run-dir", run_dir], os.path.join(run_dir, "logs"))
    return losses(run_dir)


@pytest.mark.parametrize("layout", [["--tensor-parallel", "2", "--sequence-parallel"], ["--pipeline-parallel", "2"],
                                    ["--tensor-parallel", "2", "--override", "training.trace_collectives=false"],
                                    ["--pipeline-parallel", "2", "--override", "training.cpp_wrapper=true"],
                                    ["--tensor-parallel", "2", "--sequence-parallel", "--override",
                                     "training.blocks_per_region=2"]],
                         ids=["tp2-sp", "pp2", "tp2-collectives-outside", "pp2-cpp-wrapper", "tp2-sp-grouped"])
def test_compiled_layout_trains_like_eager_data_parallel(layout, eager_losses, tmp_path):
    run_dir = str(tmp_path / "run")
    out = run(2, COMMON + layout + ["--run-dir", run_dir, "--compile"], str(tmp_path / "logs"))
    assert "torch.compile of the blocks" in out and "guides dropped, optimizer rebuilt" in out
    assert ("C++ wrapper: on (training.cpp_wrapper = true)" in out) == ("training.cpp_wrapper=true" in layout)
    assert "recompile_limit" not in out  # a block that hit the limit would run eager from then on
    # several blocks to a compiled region once the guides (drawn in Python between blocks) are
    # dropped: 2 where the config says so, 4 by default at tensor > 1 ("auto"), 1 in the pipelines
    explicit = "training.blocks_per_region=2" in layout
    per_region = 2 if explicit else 4 if "--tensor-parallel" in layout else 1
    if per_region > 1:
        chosen = "training.blocks_per_region = 2" if explicit else "auto"
        assert f"blocks per compiled region: 1 ({chosen}: guided blocks draw in Python between blocks)" in out
        assert f"blocks compiled, {per_region} per region" in out
    else:
        assert "per region" not in out
    compiled = losses(run_dir)
    assert sorted(compiled) == sorted(eager_losses) == list(range(1, STEPS + 1))
    for step, loss in eager_losses.items():
        assert compiled[step] == pytest.approx(loss, rel=1e-5), step
    # every step's record counts the graphs made so far: the first step compiles, and so does the
    # step after the drop (blocks without guides); bench_train --guided leaves such steps out
    graphs = [r["compiled_graphs"] for _, r in sorted(read_step_log(run_dir).items())]
    assert len(graphs) == STEPS and graphs[0] > 0 and graphs == sorted(graphs)
