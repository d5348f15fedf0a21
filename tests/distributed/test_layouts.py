"""Every (tensor, pipe, data) layout trains like one process (DESIGN.md invariant 1).

One launch per (tensor, pipe, data) grid runs all of its layouts' scenarios, with and without
sequence parallelism (workers/scenarios.py); the tests below read their records and compare
with the single-process PyTorch reference (common.Reference: GPTModel + torch AdamW, no
DeepSpeed, no process group).

Tolerances, fp32:
  losses of the 5-step trajectory: 1e-5 relative (its gradient norms: 1e-4)
  loss, gradient norm and every parameter's full gradient at the run's own parameters,
  at the first and the last step: 1e-5 relative (gradients: per tensor,
  max |diff| / max |reference|)
  final Adam moments (they hold the clipped gradients): 1e-4 (norm-relative)
  final weights: 1e-3 (norm-relative). Adam turns reduction-order noise in gradients that
  are ~0 (e.g. the key bias, which cannot change the loss) into O(lr) steps, so weights
  drift apart where the loss does not care; a wrong update (moments, clipping, partition)
  is off by O(1).
bf16 runs are compared with the fp32 reference at bf16 tolerance (3e-3 on the loss).
"""
import math

import pytest
import torch

from .common import (Reference, all_kinds, compare_tensors, norm_relative_error, relative, run_reference)
from .launcher import run_ranks

pytestmark = pytest.mark.slow

KINDS = all_kinds()
TRAIN_ALL = [f"train/{kind}/1/fp32" for kind in KINDS]
LAYOUTS = {
    # (tensor, pipe, data): extra scenarios beyond every FFN kind with ZeRO-1 in fp32.
    # "bf16fused" is bf16 with optimizer.implementation = fused (training/master_optimizer.py;
    # ZeRO 0: state on every rank, ZeRO 1: sharded over the data-parallel group)
    (2, 2, 2): ["drop/lowrank_sgt/1/fp32", "train/blockshuffle/0/bf16fused", "train/lowrank/1/bf16fused"],
    (2, 2, 1): ["train/lowrank/0/fp32", "train/lowrank/0/bf16", "nonfinite/lowrank/0/fp32", "nonfinite/lowrank/0/bf16",
                "drop/lowrank_sgt/1/bf16", "train/lowrank/0/bf16fused", "nonfinite/lowrank/0/bf16fused",
                "drop/lowrank_sgt/0/bf16fused", "train/lowrank/1/bf16fused", "nonfinite/lowrank/1/bf16fused"],
    (1, 2, 2): ["train/lowrank_ckpt/1/fp32", "train/lowrank_sgt/1/bf16", "resume/lowrank_sgt/1/fp32",
                "drop/lowrank_sgt/0/fp32", "nonfinite/lowrank/1/bf16", "train/lowrank_sgt/0/bf16fused",
                "resume/lowrank_sgt/0/bf16fused", "train/lowrank_ckpt/0/bf16fused", "train/lowrank/1/bf16fused",
                "drop/lowrank_sgt/1/bf16fused"],
    (2, 1, 2): ["train/lowrank_ckpt/1/fp32", "train/lowrank_sgt/0/fp32", "train/lowrank_sgt/2/fp32",
                "train/lowrank/3/fp32", "train/lowrank/2/bf16", "train/lowrank/0/bf16", "resume/lowrank/2/fp32",
                "drop/lowrank_sgt/2/fp32", "drop/lowrank_sgt/0/bf16", "nonfinite/lowrank/0/fp32",
                "nonfinite/lowrank/2/bf16", "train/dense/0/bf16fused", "resume/lowrank/0/bf16fused",
                "drop/lowrank_sgt/0/bf16fused", "nonfinite/lowrank/0/bf16fused", "train/lowrank_ckpt/0/bf16fused",
                "train/lowrank_sgt/1/bf16fused", "resume/lowrank/1/bf16fused", "nonfinite/lowrank/1/bf16fused"],
}
# Sequence parallelism (parallel/sequence.py): the same checks with the norms and residuals on
# token shards, every kind with and without self-guided training, DeepSpeed's optimizers and
# the fused one, activation checkpointing, resume and the guide drop.
SEQUENCE_PARALLEL = ["train/blockdense_sgt/1/fp32", "train/blockshuffle_sgt/1/fp32"]
LAYOUTS.update({
    (2, 1, 2, "sp"): SEQUENCE_PARALLEL + ["train/lowrank_ckpt/1/fp32", "resume/lowrank/1/fp32",
                                          "drop/lowrank_sgt/1/fp32", "train/lowrank/1/bf16fused",
                                          "train/lowrank_sgt/0/bf16fused", "train/dense/1/bf16"],
    (2, 2, 1, "sp"): SEQUENCE_PARALLEL + ["train/lowrank/0/bf16", "train/lowrank/0/bf16fused",
                                          "drop/lowrank_sgt/0/bf16fused", "nonfinite/lowrank/0/fp32"],
})
LAYOUT_IDS = {layout: "t{}p{}d{}".format(*layout[:3]) + "".join(layout[3:]) for layout in LAYOUTS}


def _scenario_name(spec: str) -> str:
    """The worker's record name for a spec (workers/scenarios.py: scenario_name)."""
    what, kind, zero, precision, *flags = spec.split("/")
    return f"{what}-{kind}-z{zero}-{precision}" + "".join(f"-{f}" for f in flags)


def _launch_specs(layout) -> list:
    """The worker's scenario specs of one layout ("/sp": with sequence parallelism)."""
    suffix = "/sp" if "sp" in layout[3:] else ""
    return [spec + suffix for spec in TRAIN_ALL + LAYOUTS[layout]]


@pytest.fixture(scope="session")
def layout_records(tmp_path_factory):
    """layout -> {scenario name: record}. The layouts of one (tensor, pipe, data) grid, with and
    without sequence parallelism, share one launch per session: each rank's start-up (torch,
    DeepSpeed, Dynamo imports) costs more than its scenarios on 2 cores."""
    cache = {}

    def get(layout):
        if layout not in cache:
            tensor, pipe, data = layout[:3]
            same_grid = [l for l in LAYOUTS if l[:3] == layout[:3]]
            out = tmp_path_factory.mktemp("t{}p{}d{}".format(*layout[:3]))
            specs = [spec for l in same_grid for spec in _launch_specs(l)]
            run_ranks(tensor * pipe * data, "tests/distributed/workers/scenarios.py",
                      ["--tensor", str(tensor), "--pipe", str(pipe), "--scenarios", ",".join(specs)], str(out))
            for l in same_grid:
                cache[l] = {_scenario_name(spec): torch.load(out / f"{_scenario_name(launched)}.pt")
                            for spec, launched in zip(TRAIN_ALL + LAYOUTS[l], _launch_specs(l))}
        return cache[layout]

    return get


@pytest.fixture(scope="session")
def references():
    cache = {}

    def get(kind):
        if kind not in cache:
            cache[kind] = run_reference(kind, 5)
        return cache[kind]

    return get


def at_own_weights(record, reference: Reference):
    """(step, recorded gradients, the reference's loss/gradients at the recorded weights) for
    the first and the last step."""
    assert len(record["states"]) == 2
    for step, state in zip((0, 4), record["states"]):
        params = {k: v for k, v in state.items() if not k.endswith(".grad")}
        grads = {k: v for k, v in state.items() if k.endswith(".grad")}
        yield step, grads, reference.gradients_at(params, step)


def check_fp32_training(record, kind, reference):
    assert record["skipped"] == [False] * 5
    assert record["global_steps"] == 5
    for got, want in zip(record["losses"], reference["losses"]):
        assert relative(got, want) <= 1e-5, (record["losses"], reference["losses"])
    for got, want in zip(record["grad_norms"], reference["grad_norms"]):
        assert relative(got, want) <= 1e-4, (record["grad_norms"], reference["grad_norms"])
    at_own = Reference(kind)
    for step, grads, want in at_own_weights(record, at_own):
        assert relative(record["losses"][step], want["loss"]) <= 1e-5
        assert relative(record["grad_norms"][step], want["grad_norm"]) <= 1e-5
        worst, name = compare_tensors(grads, want["grads"])  # also: same names, same full shapes
        assert worst <= 1e-5, f"step {step}: gradient of {name} off by {worst:.2e}"
    worst, name = compare_tensors(record["params"], reference["params"], norm_relative_error)
    assert worst <= 1e-3, f"final {name} off by {worst:.2e}"
    # eval_batch: the global-batch mean loss at the final weights, no step taken
    assert record["global_steps"] == 5
    assert relative(record["eval_loss"], at_own.gradients_at(record["params"], 5)["loss"]) <= 1e-5
    # Adam's moments hold the clipped gradients: a wrong clip factor or a misplaced ZeRO
    # partition shows here even though Adam's update hides a gradient scale
    moments = record["moments"]
    assert moments["__step__"] == reference["moments"]["__step__"] == 5
    for key in ("exp_avg", "exp_avg_sq"):
        got = {n: m[key] for n, m in moments.items() if n != "__step__"}
        want = {n: m[key] for n, m in reference["moments"].items() if n != "__step__"}
        worst, name = compare_tensors(got, want, norm_relative_error)
        assert worst <= 1e-4, f"final {key} of {name} off by {worst:.2e}"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("layout", list(LAYOUTS), ids=LAYOUT_IDS.get)
def test_every_kind_matches_one_process(layout, kind, layout_records, references):
    check_fp32_training(layout_records(layout)[f"train-{kind}-z1-fp32"], kind, references(kind))


@pytest.mark.parametrize("layout", [l for l in LAYOUTS if l[0] > 1], ids=LAYOUT_IDS.get)
def test_replicated_factors_get_identical_gradients_on_every_tensor_rank(layout, layout_records):
    """V of fc1, U of fc2, norms, row-parallel biases: bit-identical across the tensor group."""
    for kind in KINDS:
        assert layout_records(layout)[f"train-{kind}-z1-fp32"]["replicated_spread"] == 0.0, kind


EXTRA_TRAIN = [(layout, spec) for layout, specs in LAYOUTS.items() for spec in specs if spec.startswith("train/")]


@pytest.mark.parametrize("layout,spec", EXTRA_TRAIN, ids=[f"{LAYOUT_IDS[l]}-{s}" for l, s in EXTRA_TRAIN])
def test_zero_stages_precisions_and_checkpointing_match_one_process(layout, spec, layout_records, references):
    _, kind, zero, precision = spec.split("/")
    record = layout_records(layout)[_scenario_name(spec)]
    reference = references(kind)
    if precision == "fp32":
        check_fp32_training(record, kind, reference)
        return
    assert record["skipped"] == [False] * 5
    for got, want in zip(record["losses"], reference["losses"]):
        assert relative(got, want) <= 3e-3, (record["losses"], reference["losses"])
    for got, want in zip(record["grad_norms"], reference["grad_norms"]):
        assert relative(got, want) <= 3e-2, (record["grad_norms"], reference["grad_norms"])
    if precision == "bf16fused":
        check_fused_gradients(record, kind)


def check_fused_gradients(record, kind):
    """The fp32 main gradients the fused optimizer steps with, against fp32 autograd at the
    run's own (bf16-valued) weights: every tensor to bf16 noise. A missing tied-embedding
    reduction, data-parallel average or tensor-parallel reduction is off by O(1)."""
    for step, grads, want in at_own_weights(record, Reference(kind)):
        assert relative(record["grad_norms"][step], want["grad_norm"]) <= 2e-2
        worst, name = compare_tensors(grads, want["grads"], norm_relative_error)
        assert worst <= 5e-2, f"step {step}: gradient of {name} off by {worst:.2e}"


FUSED_OVERLAP = [(layout, spec) for layout, spec in EXTRA_TRAIN
                 if spec.endswith("/bf16fused") and layout[1] == 1 and layout[2] > 1]


@pytest.mark.parametrize("layout,spec", FUSED_OVERLAP, ids=[f"{LAYOUT_IDS[l]}-{s}" for l, s in FUSED_OVERLAP])
def test_fused_optimizer_all_reduces_buckets_during_backward(layout, spec, layout_records):
    """Outside a pipeline the last micro-batch's gradients are all-reduced bucket by bucket from
    the backward hooks (the tests above show the result equals the reference). A guide that
    reduce_flop leaves out keeps its bucket for the step instead."""
    launched, buckets = layout_records(layout)[_scenario_name(spec)]["overlap"]
    assert buckets > 3
    if "_sgt" in spec:
        assert 1 <= launched <= buckets
    else:
        assert launched == buckets


RESUMES = [(layout, spec) for layout, specs in LAYOUTS.items() for spec in specs if spec.startswith("resume/")]


@pytest.mark.parametrize("layout,spec", RESUMES, ids=[f"{LAYOUT_IDS[l]}-{s}" for l, s in RESUMES])
def test_resume_from_checkpoint_repeats_the_run_exactly(layout, spec, layout_records):
    record = layout_records(layout)[_scenario_name(spec)]
    assert record["resumed"] == record["first"][3:]  # bit for bit: weights, masters, Adam state, steps
    assert record["client"] == {"loop": {"step": 3}, "note": "client state survives"}
    assert record["global_steps"] == 5


DROPS = [(layout, spec) for layout, specs in LAYOUTS.items() for spec in specs if spec.startswith("drop/")]


@pytest.fixture(scope="session")
def dropped_reference():
    """Three guided steps, guides dropped with AdamW state kept, two more steps."""
    ref = Reference("lowrank_sgt")
    losses = [ref.train_step()["loss"] for _ in range(3)]
    ref.drop_guides()
    losses += [ref.train_step()["loss"] for _ in range(2)]
    return {"losses": losses, "params": ref.params()}


@pytest.mark.parametrize("layout,spec", DROPS, ids=[f"{LAYOUT_IDS[l]}-{s}" for l, s in DROPS])
def test_drop_guides_rebuilds_engine_and_keeps_optimizer_state(layout, spec, layout_records, dropped_reference):
    record = layout_records(layout)[_scenario_name(spec)]
    before, after = record["moments_before"], record["moments_after"]
    assert after["__step__"] == before["__step__"] == 3
    survivors = [n for n in before if n != "__step__" and ".guide." not in n]
    assert sorted(n for n in after if n != "__step__") == sorted(survivors)
    assert any(".guide." in n for n in before)
    for name in survivors:
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(after[name][key], before[name][key]), (name, key)
    assert record["guides_left"] == 0 and record["guide_active"] is False
    assert record["stats"]["params_after"] < record["stats"]["params_before"]
    assert not any(".guide." in n for n in record["params"])
    tolerance = 1e-5 if spec.endswith("fp32") else 3e-3
    for got, want in zip(record["losses"], dropped_reference["losses"]):
        assert relative(got, want) <= tolerance, (record["losses"], dropped_reference["losses"])
    if spec.endswith("fp32"):
        worst, name = compare_tensors(record["params"], dropped_reference["params"], norm_relative_error)
        assert worst <= 1e-3, f"final {name} off by {worst:.2e}"


NONFINITE = [(layout, spec) for layout, specs in LAYOUTS.items() for spec in specs if spec.startswith("nonfinite/")]


@pytest.mark.parametrize("layout,spec", NONFINITE, ids=[f"{LAYOUT_IDS[l]}-{s}" for l, s in NONFINITE])
def test_nonfinite_step_is_skipped_and_leaves_weights_untouched(layout, spec, layout_records):
    record = layout_records(layout)[_scenario_name(spec)]
    assert record["skipped"] == [False, True, False]
    assert math.isnan(record["losses"][1]) and math.isfinite(record["losses"][2])
    before, during, after = record["params"]
    assert all(torch.equal(during[n], before[n]) for n in before)
    assert any(not torch.equal(after[n], during[n]) for n in before)
