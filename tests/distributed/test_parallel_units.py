"""Single-process checks of the distributed core's pure parts (no process group)."""
import dataclasses

import pytest
import torch

from megatron_sffn.config import ConfigError
from megatron_sffn.model import GPTModel
from megatron_sffn.model.pipeline import CheckpointedGPT, layer_prefixes
from megatron_sffn.parallel.ds_config import check_engine_support, deep_merge, deepspeed_config
from megatron_sffn.parallel.launch import init_distributed, under_mpi
from megatron_sffn.parallel.mappings import TensorParallel
from megatron_sffn.parallel.mpu import GroupInfo, ModelParallelUnit
from megatron_sffn.training.engine import uses_own_guard
from megatron_sffn.training.optimizer import param_groups

from .common import SEED, micro_batches, tiny_config


def test_deepspeed_config_is_derived_from_our_config():
    cfg = tiny_config("lowrank", tensor=2, pipe=1, zero=2, precision="bf16", grad_clip=0.7)
    ds = deepspeed_config(cfg, data_parallel_size=2)
    assert ds["train_batch_size"] == 8 and ds["train_micro_batch_size_per_gpu"] == 2
    assert ds["gradient_accumulation_steps"] == 2  # 8 / (2 x 2)
    assert ds["gradient_clipping"] == 0.7 and ds["zero_optimization"] == {"stage": 2}
    assert ds["bf16"] == {"enabled": True} and ds["fp16"] == {"enabled": False}
    assert ds["data_types"] == {"grad_accum_dtype": "fp32"}  # fp32 accumulation across micro-batches
    fp16 = deepspeed_config(tiny_config("lowrank", precision="fp16"), 1)["fp16"]
    assert fp16["enabled"] and fp16["loss_scale"] == 0  # 0 = dynamic loss scaling
    assert "data_types" not in deepspeed_config(tiny_config("lowrank", zero=0, precision="bf16"), 1)


def test_deepspeed_extras_are_deep_merged_last():
    cfg = dataclasses.replace(tiny_config("lowrank"), deepspeed={"zero_optimization": {"overlap_comm": True},
                                                                  "comms_logger": {"enabled": True}})
    ds = deepspeed_config(cfg, 1)
    assert ds["zero_optimization"] == {"stage": 1, "overlap_comm": True}
    assert ds["comms_logger"] == {"enabled": True}
    assert deep_merge({"a": {"b": 1}}, {"a": {"c": 2}}) == {"a": {"b": 1, "c": 2}}


def test_unsupported_engine_combinations_name_the_field():
    with pytest.raises(ConfigError, match="parallel.zero_stage"):
        check_engine_support(tiny_config("lowrank_sgt", zero=3))
    with pytest.raises(ConfigError, match="parallel.zero_stage"):
        check_engine_support(tiny_config("lowrank", tensor=2, zero=0, precision="fp16"))
    check_engine_support(tiny_config("lowrank_sgt", zero=2))
    check_engine_support(tiny_config("lowrank", zero=3))


@pytest.mark.parametrize("zero,precision,pipe,guarded", [
    (0, "fp32", 1, True), (0, "fp32", 2, True), (0, "bf16", 1, True), (0, "bf16", 2, False),
    (1, "fp32", 1, False), (1, "bf16", 2, False), (2, "bf16", 1, False)])
def test_own_guard_only_where_deepspeed_norm_is_wrong(zero, precision, pipe, guarded):
    assert uses_own_guard(tiny_config("lowrank", pipe=pipe, zero=zero, precision=precision)) == guarded


def test_no_weight_decay_on_biases_and_norm_weights():
    model = GPTModel(tiny_config("lowrank_sgt").model, guided=True)
    decay, no_decay = param_groups(model.named_parameters(), 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(n.endswith(".bias") or "norm" in n for n in plain)
    assert "embedding.weight" in decayed and "blocks.1.ffn.fc1.guide.weight" in decayed
    assert "blocks.1.ffn.fc1.structure.weight_v" in decayed
    assert len(decayed) + len(plain) == len(list(model.parameters()))


def test_mpu_answers_every_name_deepspeed_asks_for():
    tensor = GroupInfo("tp", 1, [4, 5])
    data = GroupInfo("dp", 0, [5, 7])
    pipe = GroupInfo("pp", 1, [1, 5])
    model = GroupInfo("mp", 3, [0, 1, 4, 5])
    mpu = ModelParallelUnit("topo", 5, tensor=tensor, data=data, pipe=pipe, model=model)
    assert (mpu.get_tensor_model_parallel_rank(), mpu.get_tensor_model_parallel_world_size(),
            mpu.get_tensor_model_parallel_group(), mpu.get_tensor_model_parallel_src_rank()) == (1, 2, "tp", 4)
    assert (mpu.get_slice_parallel_rank(), mpu.get_slice_parallel_world_size()) == (1, 2)
    assert (mpu.get_data_parallel_rank(), mpu.get_data_parallel_world_size(), mpu.get_data_parallel_group(),
            mpu.get_data_parallel_group_ranks()) == (0, 2, "dp", [5, 7])
    assert (mpu.get_pipe_parallel_rank(), mpu.get_pipeline_model_parallel_world_size(),
            mpu.get_pipeline_model_parallel_group()) == (1, 2, "pp")
    assert (mpu.get_model_parallel_rank(), mpu.get_model_parallel_world_size(),
            mpu.get_model_parallel_group()) == (3, 4, "mp")
    # DeepSpeed treats an mpu with this method as its own `groups` module (no model parallelism)
    assert not hasattr(mpu, "initialize_sequence_parallel")


def test_mpi_environment_is_recognised(monkeypatch):
    for key in ("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "MV2_COMM_WORLD_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert not under_mpi()
    monkeypatch.setenv("PMI_RANK", "3")  # MPICH / Hydra
    assert under_mpi()


def test_half_set_launch_environment_is_refused(monkeypatch):
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT", "PMI_RANK", "OMPI_COMM_WORLD_RANK",
                "PMIX_RANK", "MV2_COMM_WORLD_RANK"):
        monkeypatch.delenv(key, raising=False)
    monkeypatch.setenv("RANK", "1")
    with pytest.raises(RuntimeError, match="MASTER_ADDR"):
        init_distributed()


def test_pipeline_layer_list_names_match_gpt_model():
    m = tiny_config("lowrank").model
    assert layer_prefixes(m) == ["embedding", "blocks.0", "blocks.1", "blocks.2", "blocks.3", "final_norm",
                                 "embedding"]
    untied = dataclasses.replace(m, tie_embeddings=False)
    assert layer_prefixes(untied)[-1] == "head"


@pytest.mark.parametrize("interval", [1, 3])
def test_activation_checkpointing_changes_nothing_but_memory(interval):
    cfg = tiny_config("lowrank_sgt")
    plain = CheckpointedGPT(cfg.model, TensorParallel.single(), True, None, interval=0).initialize(SEED)
    ckpt = CheckpointedGPT(cfg.model, TensorParallel.single(), True, None, interval=interval).initialize(SEED)
    for model in (plain, ckpt):
        model.guide_state.alpha, model.guide_state.reduce_flop = 0.5, False
    ids, labels = next(micro_batches(0, 0, 1))
    losses = []
    for model in (plain, ckpt):
        loss = model(ids, labels)
        loss.backward()
        losses.append(loss.item())
    assert losses[0] == losses[1]
    gpt = GPTModel(cfg.model, guided=True).initialize(SEED)
    gpt.guide_state.alpha, gpt.guide_state.reduce_flop = 0.5, False
    assert losses[0] == pytest.approx(gpt.loss(ids, labels).item(), rel=1e-6)
    for (name, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        assert torch.equal(a.grad, b.grad), name
