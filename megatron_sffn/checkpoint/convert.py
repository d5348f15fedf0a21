"""Checkpoint conversion, the coordinating half: check the input, start the ranks, publish
the output. The per-rank work is in reshard.py.

  DeepSpeed checkpoint (any layout) --consolidate--> consolidated folder
  consolidated folder --reshape--> run folder with a DeepSpeed checkpoint in any layout
  either --export_to_hf--> transformers folder (structured FFNs merged) + tokenizer

Every check that needs no tensor (paths, completeness, the target layout against the
model) runs before any process starts. Outputs are written to OUT.partial and renamed to
OUT only when complete, so an interrupted conversion never leaves something that looks
finished; OUT must not exist.
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import shutil
import tempfile
from typing import Dict, Iterator, Optional, Tuple, Union

import torch

from ..config import Config, ConfigError, config_for_another_machine, config_from_dict
from ..optional import MissingDependency, require
from .consolidated import CONFIG_FILE, ConsolidatedError, check_weights_fit, model_from_consolidated
from .hf_export import ExportError
from .locate import PARTIAL_SUFFIX, CheckpointSource, CheckpointSourceError, locate
from .local_ranks import WorkerError, run_local_ranks
from .reshard import ConversionError

USER_ERRORS = (ConversionError, CheckpointSourceError, ConsolidatedError, ConfigError, ExportError, WorkerError,
               MissingDependency)
Source = Union[str, CheckpointSource]


def _source(source: Source) -> CheckpointSource:
    return source if isinstance(source, CheckpointSource) else locate(source)


def _check_output(out: str) -> str:
    """The absolute --save path, or ConversionError if it exists or cannot be created (a file on
    its way was a FileExistsError traceback). Creates nothing."""
    out = os.path.abspath(os.path.expanduser(out))
    if os.path.exists(out):
        raise ConversionError(f"--save {out} already exists; choose a new path")
    existing = os.path.dirname(out)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise ConversionError(f"--save {out} cannot be created: {existing} is a file, not a folder; choose "
                              "another path")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConversionError(f"--save {out} cannot be created: {existing} is not a writable folder")
    return out


def _prepare_output(out: str) -> Tuple[str, str]:
    out = _check_output(out)
    partial = out + PARTIAL_SUFFIX
    if os.path.exists(partial):  # left by an interrupted conversion to the same place
        shutil.rmtree(partial)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    return out, partial


def _config_of(src: CheckpointSource, flag: str = "--load") -> Config:
    try:
        return config_from_dict(src.config)
    except ConfigError as e:
        raise ConversionError(f"{flag} {src.path}: its config does not load: {e}") from None


def source_world(src: CheckpointSource) -> int:
    """Ranks needed to load a DeepSpeed checkpoint: its own layout (ZeRO refuses another data
    size); the fused optimizer saves whole tensors, so one data rank reads it."""
    layout = src.layout
    if layout.get("optimizer") == "fused":
        return int(layout["tensor"]) * int(layout["pipeline"])
    if layout.get("data") is None:
        raise CheckpointSourceError(f"{src.path}/meta.json does not record the data-parallel size ('layout')")
    return int(layout["tensor"]) * int(layout["pipeline"]) * int(layout["data"])


# ---------------------------------------------------------------------------------- consolidate

def _check_sizes(timeout: Optional[float], **sizes: Optional[int]) -> None:
    """A given size below 1 or a timeout that is not positive is a mistake, not 'the default'
    (0 used to fall back to the source's layout silently)."""
    if timeout is not None and timeout <= 0:
        raise ConversionError(f"--timeout must be positive seconds, got {timeout:g}")
    for name, value in sizes.items():
        if value is not None and value < 1:
            raise ConversionError(f"--{name.replace('_', '-')} must be >= 1, got {value}")


def consolidate(source: Source, out: str, with_optimizer: bool = True, timeout: Optional[float] = None,
                verbose: bool = False) -> str:
    """DeepSpeed checkpoint -> consolidated folder `out` (fp32 masters, Adam moments unless weights only)."""
    _check_sizes(timeout)
    _check_output(out)
    src = _source(source)
    if src.kind == "consolidated":
        raise ConversionError(f"--load {src.path} is already a consolidated checkpoint")
    _config_of(src)
    world = source_world(src)
    out, partial = _prepare_output(out)
    args = ["-m", "megatron_sffn.checkpoint.reshard", "export", "--load", src.path, "--save", out]
    try:
        run_local_ranks(world, args + ([] if with_optimizer else ["--weights-only"]), timeout, verbose)
    finally:
        if os.path.exists(partial):
            shutil.rmtree(partial, ignore_errors=True)
    return out


@contextlib.contextmanager
def consolidated_view(source: Source, with_optimizer: bool = False, verbose: bool = False) -> Iterator[str]:
    """A consolidated folder for `source`: itself, or a temporary consolidation removed afterwards."""
    src = _source(source)
    if src.kind == "consolidated":
        yield src.path
        return
    tmp = tempfile.mkdtemp(prefix="megatron_sffn_consolidated_")
    try:
        yield consolidate(src, os.path.join(tmp, "consolidated"), with_optimizer, verbose=verbose)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---------------------------------------------------------------------------------- reshape

def target_config(config: Dict, tensor: int, pipeline: int, data: int, zero_stage: int, run_dir: str,
                  implementation: Optional[str] = None) -> Config:
    """The run config with a new layout, validated against the model (one error naming the flags)."""
    from ..parallel.ds_config import check_engine_support
    raw = copy.deepcopy(config)
    parallel = raw.setdefault("parallel", {})
    if parallel.get("tensor", 1) != tensor:  # sequence parallelism is a speed choice of the source's tensor size:
        parallel["sequence_parallel"] = "auto"  # the new size decides again (the numbers are the same)
    parallel.update(tensor=tensor, pipeline=pipeline, zero_stage=zero_stage)
    raw.setdefault("output", {})["run_dir"] = run_dir
    training = raw.setdefault("training", {})
    for key in ("compile", "cuda_graphs"):   # "on" was resolved for the source's machine and layout:
        if training.get(key) is True:        # the new run's machine and layout decide again
            training[key] = "auto"
    if implementation is not None:
        raw.setdefault("optimizer", {})["implementation"] = implementation
    implementation = raw.get("optimizer", {}).get("implementation", "deepspeed")
    flags = (f"--tensor-parallel {tensor} --pipeline-parallel {pipeline} --data-parallel {data} "
             f"--zero-stage {zero_stage} --optimizer-implementation {implementation}")
    for value, flag in ((tensor, "--tensor-parallel"), (pipeline, "--pipeline-parallel"), (data, "--data-parallel")):
        if value < 1:
            raise ConversionError(f"{flag} {value} must be at least 1")
    try:
        cfg = config_from_dict(raw, world_size=tensor * pipeline * data)
        check_engine_support(cfg)
    except ConfigError as e:
        raise ConversionError(f"layout {flags} does not fit this model: {e}") from None
    return cfg


def check_consolidated_fits(path: str, cfg: Config) -> bool:
    """Names and full shapes of model.safetensors against the config (no tensor is read);
    returns whether the guides are present."""
    from safetensors import safe_open

    from ..model.gpt import GPTModel
    with safe_open(os.path.join(path, "model.safetensors"), framework="pt") as f:
        shapes = {name: torch.empty(f.get_slice(name).get_shape(), device="meta") for name in f.keys()}
    guided = any(".guide." in name for name in shapes)
    with torch.device("meta"):
        expected = {n: tuple(p.shape) for n, p in GPTModel(cfg.model, guided=guided).named_parameters()}
    check_weights_fit(shapes, expected, path)
    return guided


def reshape(source: Source, out: str, tensor: Optional[int] = None, pipeline: Optional[int] = None,
            data: Optional[int] = None, zero_stage: Optional[int] = None, timeout: Optional[float] = None,
            verbose: bool = False, implementation: Optional[str] = None) -> str:
    """A run folder `out` holding one DeepSpeed checkpoint of the source's training state in the
    given layout (default: the source's own), resumable with `launchers/pretrain.py --config
    out/config.json`. A DeepSpeed source is consolidated on the way (in a temporary folder)."""
    _check_sizes(timeout, tensor_parallel=tensor, pipeline_parallel=pipeline, data_parallel=data)
    _check_output(out)
    src = _source(source)
    layout = src.layout
    tensor = tensor or int(layout.get("tensor") or 1)
    pipeline = pipeline or int(layout.get("pipeline") or 1)
    data = data or int(layout.get("data") or 1)
    zero_stage = int(layout.get("zero_stage", 1)) if zero_stage is None else zero_stage
    out_abs = os.path.abspath(os.path.expanduser(out))
    cfg = target_config(src.config, tensor, pipeline, data, zero_stage, out_abs, implementation)
    if src.kind == "consolidated":
        if not src.has_optimizer:
            raise ConversionError(f"--load {src.path} holds no optimizer state (optimizer.safetensors): it can be "
                                  "exported or evaluated but not resumed; consolidate the DeepSpeed checkpoint again "
                                  "without --weights-only")
        for key in ("loop", "optimizer_step"):
            if key not in src.meta:
                raise ConversionError(f"--load {src.path}/meta.json has no '{key}': no training state to resume from")
        check_consolidated_fits(src.path, cfg)
    out, partial = _prepare_output(out)
    try:
        with consolidated_view(src, with_optimizer=True, verbose=verbose) as path:
            os.makedirs(partial)
            with open(os.path.join(partial, CONFIG_FILE), "w") as f:
                json.dump(config_for_another_machine(cfg), f, indent=2)
            args = ["-m", "megatron_sffn.checkpoint.reshard", "import", "--load", path, "--run-dir", partial]
            run_local_ranks(tensor * pipeline * data, args, timeout, verbose)
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            shutil.rmtree(partial, ignore_errors=True)
    return out


# ---------------------------------------------------------------------------------- single rank, HF

def tokenizer_path(cfg: Config, override: Optional[str] = None) -> str:
    """The run's sentencepiece model ("embedded" = the bundled one, as the training loop resolves it)."""
    from ..data import assets
    name = override or cfg.data.tokenizer_model
    if name == "embedded" or (override is None and list(cfg.data.paths) == ["embedded"]):
        return assets.default_tokenizer_path()
    if not os.path.isfile(name):
        origin = "--tokenizer-model" if override else "the run's data.tokenizer_model"
        raise ConversionError(f"tokenizer model {name} not found ({origin}); pass --tokenizer-model PATH")
    return name


def load_single_rank(source: Source, device="cpu", dtype=torch.float32, verbose: bool = False):
    """(GPTModel on one device, Config, consolidated meta) from any checkpoint."""
    with consolidated_view(source, with_optimizer=False, verbose=verbose) as path:
        return model_from_consolidated(path, device=device, dtype=dtype)


def drop_finished_guides(model, cfg: Config, meta: Dict, path: str) -> None:
    """Guides still present once the guide weight has reached 0 are dead weight: drop them.
    Earlier, the layer is a mixture of guide and structure, which no export represents."""
    from ..training.phases import RunPhases
    if not model.guide_state.active:
        return
    end = RunPhases.from_config(cfg).guides_end_at()
    step = int(meta.get("step", 0))
    if step < end:
        raise ConversionError(f"checkpoint {path} is from step {step}, inside the self-guided phase (guide weight > 0 "
                              f"until step {end}): export a checkpoint from step {end} or later")
    model.drop_guides()


def export_to_hf(source: Source, out: str, keep_factors: bool = False, tokenizer_model: Optional[str] = None,
                 verbose: bool = False) -> str:
    """transformers folder (LlamaForCausalLM or GPTNeoXForCausalLM) + tokenizer; returns the architecture."""
    from .hf_export import export_hf, hf_architecture
    require("transformers", "--to hf")
    _check_output(out)
    src = _source(source)
    cfg = _config_of(src)
    hf_architecture(cfg.model)  # refuse before any conversion work
    tokenizer = tokenizer_path(cfg, tokenizer_model)
    out, partial = _prepare_output(out)
    try:
        model, cfg, meta = load_single_rank(src, verbose=verbose)
        drop_finished_guides(model, cfg, meta, src.path)
        arch = export_hf(model, partial, tokenizer, keep_factors)
        with open(os.path.join(partial, "megatron_sffn_source.json"), "w") as f:
            json.dump({"source": src.path, "step": meta.get("step"), "consumed_tokens": meta.get("consumed_tokens"),
                       "architecture": arch, "keep_factors": keep_factors}, f, indent=2)
        os.replace(partial, out)
    finally:
        if os.path.exists(partial):
            shutil.rmtree(partial, ignore_errors=True)
    return arch
