"""Typed run configuration: one JSON file per run, validated before anything heavy starts.

Every section is a dataclass whose defaults are the single visible source of defaults.
`load_config(path, overrides)` reads the JSON, rejects unknown keys and wrong types with a
message naming the dotted key, applies `--override a.b.c=value` strings, then checks the
shapes (ranks, blocks, heads, tensor-parallel size) so an impossible model never reaches a GPU.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Union


class ConfigError(ValueError):
    """A configuration problem; the message names the dotted key and the offending value."""


FFN_KINDS = ("dense", "lowrank", "blockdense", "blockshuffle")


@dataclass
class FFNConfig:
    kind: str = "dense"
    rank: Optional[int] = None          # lowrank, blockdense
    blocks: Optional[int] = None        # blockdense, blockshuffle
    first_layer_dense: bool = True      # the paper keeps layer 0's FFN dense
    init: str = "paper"                 # "paper": SVD / per-block orthogonal init; "normal": N(0, std)


@dataclass
class ModelConfig:
    vocab_size: int = 32000
    hidden_size: int = 768
    num_layers: int = 12
    num_heads: int = 12
    num_kv_heads: Optional[int] = None  # None = num_heads (no GQA)
    head_dim: Optional[int] = None      # None = hidden_size // num_heads
    ffn_hidden_size: int = 3072
    seq_length: int = 1024
    norm: str = "layernorm"             # layernorm | rmsnorm
    norm_eps: float = 1e-5
    activation: str = "gelu"            # gelu | swiglu
    bias: bool = True
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    init_std: float = 0.02
    ffn: FFNConfig = field(default_factory=FFNConfig)

    @property
    def kv_heads(self) -> int:
        return self.num_kv_heads or self.num_heads

    @property
    def attn_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_heads


@dataclass
class SelfGuidedConfig:
    enabled: bool = False
    schedule: str = "cosine"            # cosine | linear: how the guide weight a falls 1 -> 0
    guided_fraction: float = 0.5        # guided phase length as a fraction of train steps
    reduce_flop: bool = True            # compute the guide only with probability a
    same_flops: bool = False            # repeat the guided-phase data at the end, structured only
    flops_budget: Union[str, float] = "dense"  # same_flops budget: "dense" or total training FLOPs


@dataclass
class DataConfig:
    paths: List[str] = field(default_factory=lambda: ["embedded"])  # prefixes; "embedded" = bundled corpus
    weights: Optional[List[float]] = None
    split: str = "969,30,1"
    tokenizer_model: str = "embedded"
    cache_dir: Optional[str] = None     # where sample indexes are cached; None = beside the data
    num_workers: int = 0


@dataclass
class OptimizerConfig:
    lr: float = 6e-4
    min_lr_ratio: float = 0.1           # cosine floor as a fraction of lr
    warmup_fraction: float = 0.1        # of train steps; warmup_steps wins when set
    warmup_steps: Optional[int] = None
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.999
    eps: float = 1e-8
    grad_clip: float = 1.0
    # "fused": fp32 master weights and main gradients kept by megatron_sffn (bf16, ZeRO 0 or 1):
    # gradients accumulate straight into one flat fp32 buffer, bucketed all-reduce /
    # reduce-scatter, clipping folded into torch's fused AdamW (1.3B on an H100: +11-12%
    # tokens/s over "deepspeed", docs/performance.md).
    # "deepspeed": DeepSpeed's mixed-precision optimizer wrappers (any precision, ZeRO 0-3).
    # "auto": fused where it applies (bf16, ZeRO 0/1), else deepspeed; a resumed run keeps
    # the implementation its checkpoint was written with. Resolved when the config is built.
    implementation: str = "auto"
    # the fused implementation's update: "torch" (torch's fused AdamW, then a copy into the bf16
    # weights), "compiled" (training/compiled_update.py: one Inductor pass that also writes the
    # bf16 weights and stores nothing into the gradients, 8 bytes a parameter less; 1.027x a
    # 1.3B lowrank step on an H100, docs/performance.md) or "auto": compiled where the fused
    # optimizer runs and the blocks are compiled (a GPU run already pays Inductor), else torch.
    # Resolved with the speed settings.
    update: str = "auto"


FP8_SCALINGS = ("tensorwise", "rowwise")
FP8_GRAD_FORMATS = ("auto", "e4m3", "e5m2")
FP8_LAYERS = ("auto", "all")


@dataclass
class Fp8Config:
    # FP8 GEMMs for the attention projections, dense FFNs and structured factors (megatron_sffn/fp8/):
    # FP8 inputs with dynamic scaling, bf16 outputs, weights and optimizer state as in bf16.
    # Needs training.precision bf16 and a GPU with FP8 tensor cores (H100, H200, L40, B200)
    enabled: bool = False
    scaling: str = "tensorwise"         # tensorwise | rowwise (one scale per row of each GEMM operand)
    grad_format: str = "auto"           # auto (tensorwise: e5m2, rowwise: e4m3) | e4m3 | e5m2
    layers: str = "auto"                # auto: FP8 where measured to pay (fp8/dispatch.py) | all: wherever shapes allow
    # compiled blocks: backward reuses forward's FP8 casts instead of recomputing them (one byte a value
    # more held to backward; fp8/keep_casts.py): no faster on an H100 at 1.3B or 2.7B dense, 3-4 GB more
    # peak (docs/performance.md). Tensorwise only: rowwise casts along another axis there
    keep_casts: bool = False


@dataclass
class ProfileConfig:
    # torch.profiler over training steps start_step .. end_step - 1 (1-based, as the step log
    # counts; Megatron-LM's --profile-step-start/-end) on the listed global ranks: a trace per
    # rank in <run_dir>/profile (TensorBoard's profiler plugin, Perfetto, chrome://tracing) and
    # a table of the top ops with the device's busy share beside it (training/profiling.py)
    enabled: bool = False
    start_step: int = 10
    end_step: int = 12
    ranks: List[int] = field(default_factory=lambda: [0])


@dataclass
class TrainingConfig:
    train_steps: Optional[int] = None   # stop by steps ...
    train_tokens: Optional[int] = None  # ... or by tokens (one of the two)
    micro_batch_size: int = 8
    global_batch_size: int = 512
    seed: int = 1234
    precision: str = "bf16"             # bf16 | fp16 | fp32
    log_interval: int = 10
    eval_interval: int = 1000
    eval_iters: int = 20
    save_interval: int = 1000
    keep_last: int = 3
    exit_duration_minutes: Optional[float] = None
    exit_interval: Optional[int] = None  # save and exit once the step is a multiple of this (Megatron's --exit-interval)
    max_nonfinite_steps: int = 5        # consecutive non-finite steps before the run stops
    # torch.compile each transformer block (guided ones too). "auto": on where CUDA is (1.3B
    # lowrank on an H100: 73.5K tokens/s compiled, 59.1K eager), off on CPU; true/false force it
    compile: Union[bool, str] = "auto"
    # replay each compiled block's forward and backward as CUDA graphs (torch.compile's
    # "reduce-overhead"): the host no longer issues every kernel, which is what bounds small
    # micro-batches and tensor parallelism (docs/performance.md). true needs what
    # cuda_graphs_refusal() checks (compile, the fused optimizer, tensor 1, no pipeline, no
    # activation checkpointing); "auto": on where CUDA is and that check allows them
    cuda_graphs: Union[bool, str] = "auto"
    # compiled blocks run through Inductor's C++ wrapper instead of its Python one: each kernel
    # and GEMM is launched from C++, which is what a tensor-parallel rank's step waits on (TP2,
    # emulated on an H100: 71.2 -> 56.3 ms per micro-batch; docs/performance.md). "auto": on
    # where compiled blocks run on CUDA without CUDA graphs (a replay runs no wrapper) and the
    # installed torch can call the traced collectives from C++ (cpp_wrapper_refusal); false is
    # the fallback (the Python wrapper, as before)
    cpp_wrapper: Union[bool, str] = "auto"
    # under compile, the tensor-parallel collectives are traced into the blocks' graphs; false
    # keeps them outside (a graph break at each, 1.9x slower per step on an H200: the
    # behaviour before, kept as a fallback)
    trace_collectives: bool = True
    # under compile, consecutive blocks compiled as one region (model/compile.py,
    # compile_block_groups): one region's host cost per group instead of one per block. "auto":
    # AUTO_BLOCKS_PER_REGION at tensor > 1, whose small blocks leave the host bound (an emulated
    # TP4 SP rank: 1.43x on an H100, 1.04x and 0.89x on two H200s, docs/performance.md), 1 at
    # tensor 1; not with pipelines, CUDA graphs or guides, which keep one region per block; a
    # group never spans two activation-checkpoint chunks
    blocks_per_region: Union[int, str] = "auto"
    activation_checkpointing: bool = False
    checkpoint_interval: int = 1        # checkpoint every Nth block when activation_checkpointing
    peak_tflops_per_gpu: Optional[float] = None  # for MFU; None = detect H100/H200/A100 bf16 peak
    fp8: Fp8Config = field(default_factory=Fp8Config)
    profile: ProfileConfig = field(default_factory=ProfileConfig)


@dataclass
class ParallelConfig:
    tensor: int = 1
    pipeline: int = 1
    zero_stage: int = 1
    partition_method: str = "parameters"
    # Megatron-style sequence parallelism: outside the tensor-parallel regions (norms, residual
    # adds) each tensor rank keeps 1/tensor of the tokens; needs tensor > 1 to do anything.
    # "auto" (resolve_sequence_parallel): on wherever tensor > 1 allows it, since without it
    # every tensor rank repeats those passes on all tokens (TP2 85% of DP4's tokens/s per GPU
    # against 95% with it, docs/performance.md) and holds their activations whole
    sequence_parallel: Union[bool, str] = "auto"


@dataclass
class OutputConfig:
    run_dir: str = "runs/default"
    tensorboard: bool = True
    checkpoints: bool = True            # false: never save (benchmarks); an existing checkpoint still resumes


@dataclass
class Config:
    name: str = "run"
    model: ModelConfig = field(default_factory=ModelConfig)
    self_guided: SelfGuidedConfig = field(default_factory=SelfGuidedConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    deepspeed: Dict[str, Any] = field(default_factory=dict)  # extra DeepSpeed keys, merged last
    # Other machines this config is laid out for, as --override lists, e.g. {"4x80GB":
    # ["parallel.zero_stage=2", "training.micro_batch_size=4", ...]}. A note for people and
    # tools/plan_layout.py; the run itself uses the sections above.
    layouts: Dict[str, List[str]] = field(default_factory=dict)

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)


# ---------------------------------------------------------------------------- parsing

def _type_name(tp) -> str:
    return getattr(tp, "__name__", str(tp).replace("typing.", ""))


def _coerce(value: Any, tp, key: str) -> Any:
    """Check `value` against the annotation `tp`; return it (ints widen to floats)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        names = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"config key '{key}' must be {names}, got {value!r}")
    if origin in (list, List):
        if not isinstance(value, list):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        (item,) = args
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be an object, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}' must be an object, got {value!r}")
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported annotation {tp} for {key}")


def _build(cls, data: Dict[str, Any], prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        dotted = f"{prefix}.{key}" if prefix else key
        if key not in hints:
            raise ConfigError(f"unknown config key '{dotted}' (known: {', '.join(names)})")
        kwargs[key] = _coerce(value, hints[key], dotted)
    return cls(**kwargs)


def _parse_override(text: str):
    if "=" not in text:
        raise ConfigError(f"--override '{text}' must look like key.path=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw  # bare strings need no quotes: --override data.split=98,1,1
    return key, value


def apply_overrides(data: Dict[str, Any], overrides: List[str]) -> Dict[str, Any]:
    """Set `a.b.c=value` entries in the raw dict; unknown keys are caught later by _build."""
    for text in overrides or []:
        key, value = _parse_override(text)
        parts = key.split(".")
        node = data
        for i, part in enumerate(parts[:-1]):
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise ConfigError(f"--override {key}: '{'.'.join(parts[:i + 1])}' is not a section")
            node = child
        node[parts[-1]] = value
    return data


def config_from_dict(data: Dict[str, Any], overrides: Optional[List[str]] = None,
                     world_size: Optional[int] = None, cuda: Optional[bool] = None) -> Config:
    """The validated config, with every "auto" resolved to what runs. cuda: whether the run
    has CUDA (None: ask torch, only when a setting is "auto"); the planner passes True."""
    data = apply_overrides(json.loads(json.dumps(data)), overrides or [])
    cfg = _build(Config, data)
    resolve_sequence_parallel(cfg)
    validate(cfg, world_size)
    resolve_optimizer_implementation(cfg)
    resolve_speed_settings(cfg, cuda, world_size)
    return cfg


def fused_optimizer_applies(cfg: Config) -> bool:
    """The fused optimizer covers bf16 with ZeRO 0 or 1 (fp16 needs loss scaling, ZeRO 2/3 sharded grads)."""
    return cfg.training.precision == "bf16" and cfg.parallel.zero_stage in (0, 1)


def fused_optimizer_runs(cfg: Config) -> bool:
    """optimizer.implementation is fused, or "auto" (a config not yet resolved) where it applies."""
    o = cfg.optimizer
    return o.implementation == "fused" or (o.implementation == "auto" and fused_optimizer_applies(cfg))


def resolve_optimizer_implementation(cfg: Config) -> None:
    """Turn optimizer.implementation 'auto' into the one that runs; remember that it was chosen
    automatically (an attribute outside the dataclass fields, so saved configs hold the
    concrete name) so that a resumed run may follow its checkpoint instead."""
    o = cfg.optimizer
    if o.implementation == "auto":
        o.implementation = "fused" if fused_optimizer_applies(cfg) else "deepspeed"
        o.chosen_automatically = True
    _require(o.update in ("torch", "auto") or o.implementation == "fused",
             f"config key 'optimizer.update' = '{o.update}' is the fused optimizer's (bf16, ZeRO 0 or 1); "
             f"'optimizer.implementation' is '{o.implementation}' here")


def optimizer_chosen_automatically(cfg: Config) -> bool:
    return getattr(cfg.optimizer, "chosen_automatically", False)


def _cuda_available() -> bool:
    import torch  # deferred: config errors come before torch is imported
    return torch.cuda.is_available()


# blocks to a compiled region at tensor > 1 (training.blocks_per_region "auto")
AUTO_BLOCKS_PER_REGION = 4


def resolve_speed_settings(cfg: Config, cuda: Optional[bool] = None, world_size: Optional[int] = None) -> None:
    """Turn training.compile and training.cuda_graphs "auto" into what runs, and keep why in
    `cfg.training.chosen_because` (outside the dataclass fields: saved configs hold the values)
    for the run banner. CUDA graphs are chosen by the same check that refuses an explicit
    `true` (cuda_graphs_refusal), so what that check allows, auto uses, on one GPU: replayed
    blocks beside several ranks' collectives have not been run yet (a 2-GPU tensor-parallel run
    hung), so there auto leaves them off and --cuda-graphs opts in."""
    t = cfg.training
    why = {}
    if "auto" in (t.compile, t.cuda_graphs, t.cpp_wrapper):  # blocks_per_region's auto needs no CUDA answer
        cuda = _cuda_available() if cuda is None else cuda
    if t.compile == "auto":
        t.compile = bool(cuda)
        why["compile"] = "auto, CUDA" if cuda else "auto, no CUDA"
    else:
        why["compile"] = f"training.compile = {str(t.compile).lower()}"
    if t.cuda_graphs == "auto":
        refusal = cuda_graphs_refusal(cfg) if cuda else "no CUDA"
        if refusal is None and (world_size or 1) > 1:
            refusal = f"not yet measured on several GPUs ({world_size} ranks; --cuda-graphs opts in)"
        t.cuda_graphs = refusal is None
        why["cuda_graphs"] = "auto" if refusal is None else f"auto: {_short_reason(refusal)}"
    else:
        if t.cuda_graphs:
            _require_cuda_graphs_allowed(cfg)
        why["cuda_graphs"] = f"training.cuda_graphs = {str(t.cuda_graphs).lower()}"
    if t.cpp_wrapper == "auto":
        refusal = ("no compile" if not t.compile else "no CUDA" if not cuda
                   else "CUDA graphs replay the blocks" if t.cuda_graphs
                   else _short_reason(cpp_wrapper_refusal(cfg) or "") or None)
        t.cpp_wrapper = refusal is None
        why["cpp_wrapper"] = "auto" if refusal is None else f"auto: {refusal}"
    else:
        _require(not (t.cpp_wrapper and not t.compile),
                 "config key 'training.cpp_wrapper' = true needs the blocks compiled, and 'training.compile' "
                 f"resolved to off ({why['compile']})")
        refusal = cpp_wrapper_refusal(cfg) if t.cpp_wrapper else None
        _require(refusal is None, refusal or "")
        why["cpp_wrapper"] = f"training.cpp_wrapper = {str(t.cpp_wrapper).lower()}"
    if t.blocks_per_region == "auto":
        tensor = cfg.parallel.tensor > 1
        t.blocks_per_region = AUTO_BLOCKS_PER_REGION if tensor else 1
        why["blocks_per_region"] = "auto, tensor > 1" if tensor else "auto, tensor 1"
    else:
        why["blocks_per_region"] = f"training.blocks_per_region = {t.blocks_per_region}"
    t.chosen_because = why
    resolve_optimizer_update(cfg, cuda)


def resolve_optimizer_update(cfg: Config, cuda: Optional[bool] = None) -> None:
    """optimizer.update "auto": the compiled update where the fused optimizer runs and the blocks
    are compiled on a GPU (Inductor is paid for already; measured there), else torch's kernel;
    why in optimizer_update_chosen_because."""
    o = cfg.optimizer
    if o.update != "auto":
        o.chosen_because = f"optimizer.update = {o.update}"
        return
    fused = fused_optimizer_runs(cfg)
    compiled = cfg.training.compile is True
    if fused and compiled and cuda is None:
        cuda = _cuda_available()
    o.update = "compiled" if fused and compiled and cuda else "torch"
    o.chosen_because = ("auto, compiled blocks" if o.update == "compiled" else "auto: optimizer deepspeed"
                        if not fused else "auto: no compile" if not compiled else "auto: no CUDA")


def optimizer_update_chosen_because(cfg: Config) -> str:
    """Why optimizer.update is what it is, as resolve_optimizer_update chose it."""
    return getattr(cfg.optimizer, "chosen_because", "")


def sequence_parallel_refusal(cfg: Config) -> Optional[str]:
    """Why parallel.sequence_parallel "auto" leaves it off, or None where it turns it on."""
    p, seq = cfg.parallel, cfg.model.seq_length
    if p.tensor == 1:
        return "tensor 1"
    if seq % p.tensor:
        return f"tensor {p.tensor} does not divide model.seq_length {seq}"
    if p.zero_stage == 3:
        return "ZeRO 3"
    return None


def resolve_sequence_parallel(cfg: Config) -> None:
    """Turn parallel.sequence_parallel "auto" into what runs (before validate, which checks an
    explicit true), keeping why in `cfg.parallel.chosen_because` for the banner and for
    config_for_another_machine."""
    p = cfg.parallel
    if p.sequence_parallel == "auto":
        refusal = sequence_parallel_refusal(cfg)
        p.sequence_parallel = refusal is None
        p.chosen_because = "auto, tensor > 1" if refusal is None else f"auto: {refusal}"
        return
    _require(isinstance(p.sequence_parallel, bool),
             f"config key 'parallel.sequence_parallel' = {p.sequence_parallel!r} must be true, false or \"auto\"")
    p.chosen_because = f"parallel.sequence_parallel = {str(p.sequence_parallel).lower()}"


def _short_reason(refusal: str) -> str:
    """"config key 'training.cuda_graphs' = true needs X (details): why" -> "needs X"."""
    text = refusal.split(" = true ", 1)[-1]
    return text.split(":", 1)[0].split(" (", 1)[0]


def config_for_another_machine(cfg: Config) -> Dict[str, Any]:
    """cfg.to_dict() with the speed settings chosen automatically written back as "auto": a
    config file for a run elsewhere (a reshaped checkpoint), where CUDA and the layout may differ."""
    data = cfg.to_dict()
    for key, why in speed_chosen_because(cfg).items():
        if why.startswith("auto"):
            data["training"][key] = "auto"
    if sequence_parallel_chosen_because(cfg).startswith("auto"):
        data["parallel"]["sequence_parallel"] = "auto"
    if optimizer_update_chosen_because(cfg).startswith("auto"):
        data["optimizer"]["update"] = "auto"
    return data


def sequence_parallel_chosen_because(cfg: Config) -> str:
    """Why parallel.sequence_parallel is what it is, as resolve_sequence_parallel chose it."""
    return getattr(cfg.parallel, "chosen_because", "")


def speed_chosen_because(cfg: Config) -> Dict[str, str]:
    """{"compile": why, "cuda_graphs": why, "cpp_wrapper": why, "blocks_per_region": why} as
    resolve_speed_settings chose them."""
    return getattr(cfg.training, "chosen_because", {})


CONFIGS_DIR = Path(__file__).resolve().parent.parent / "configs"


def shipped_configs() -> List[str]:
    """File names of the configs in configs/ (empty where the package is installed without them)."""
    return sorted(p.name for p in CONFIGS_DIR.glob("*.json")) if CONFIGS_DIR.is_dir() else []


def resolve_config_path(name: Union[str, Path]) -> Path:
    """The config file `--config name` means: an existing path always wins; otherwise a shipped
    config of that name (`1p3b_lowrank.json` or `1p3b_lowrank` finds configs/1p3b_lowrank.json
    from any folder). Unknown: ConfigError naming the closest shipped configs."""
    path = Path(name)
    if path.is_file():
        return path
    if not path.is_absolute():
        rest = Path(*path.parts[1:]) if path.parts[:1] == ("configs",) and len(path.parts) > 1 else path
        for candidate in (CONFIGS_DIR / rest, CONFIGS_DIR / f"{rest}.json"):
            if candidate.is_file():
                return candidate
    shipped = shipped_configs()
    close = difflib.get_close_matches(path.name if path.name.endswith(".json") else f"{path.name}.json",
                                      shipped, n=3, cutoff=0.0)
    where = f"; closest shipped configs (in {CONFIGS_DIR}): {', '.join(close)}" if close else ""
    raise ConfigError(f"config file not found: {name}{where}")


def read_config_file(name: Union[str, Path]) -> Dict[str, Any]:
    """The JSON object of a config file (resolve_config_path finds it), unvalidated."""
    path = resolve_config_path(name)
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"config file {path} is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object")
    return data


def load_config(path: Union[str, Path], overrides: Optional[List[str]] = None,
                world_size: Optional[int] = None, cuda: Optional[bool] = None) -> Config:
    return config_from_dict(read_config_file(path), overrides, world_size, cuda)


# ---------------------------------------------------------------------------- validation

def _require(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _choice(value, choices, key):
    _require(value in choices, f"config key '{key}' = {value!r} must be one of {', '.join(map(str, choices))}")


def _positive(value, key):
    _require(value is not None and value > 0, f"config key '{key}' = {value!r} must be positive")


def _divides(divisor: int, total: int, dkey: str, tkey: str) -> None:
    _require(total % divisor == 0,
             f"config key '{dkey}' = {divisor} must divide '{tkey}' = {total}")


def validate_ffn(m: ModelConfig, tp: int) -> None:
    f = m.ffn
    _choice(f.kind, FFN_KINDS, "model.ffn.kind")
    _choice(f.init, ("paper", "normal"), "model.ffn.init")
    d, h = m.hidden_size, m.ffn_hidden_size
    if f.kind in ("lowrank", "blockdense"):
        _require(f.rank is not None, f"config key 'model.ffn.rank' is required for ffn kind '{f.kind}'")
        _positive(f.rank, "model.ffn.rank")
        if f.kind == "lowrank":
            _require(f.rank < min(d, h), f"config key 'model.ffn.rank' = {f.rank} must be below "
                                         f"min(hidden_size, ffn_hidden_size) = {min(d, h)}")
    if f.kind in ("blockdense", "blockshuffle"):
        _require(f.blocks is not None, f"config key 'model.ffn.blocks' is required for ffn kind '{f.kind}'")
        _positive(f.blocks, "model.ffn.blocks")
        _divides(f.blocks, d, "model.ffn.blocks", "model.hidden_size")
        _divides(f.blocks, h, "model.ffn.blocks", "model.ffn_hidden_size")
    if f.kind == "blockdense":
        _divides(f.blocks, f.rank, "model.ffn.blocks", "model.ffn.rank")
        if tp > 1:
            _divides(tp, f.blocks, "parallel.tensor", "model.ffn.blocks")
    if f.kind == "blockshuffle":
        if tp > 1:
            _divides(tp, f.blocks, "parallel.tensor", "model.ffn.blocks")
    if f.kind == "dense":
        _require(f.rank is None and f.blocks is None,
                 "config keys 'model.ffn.rank'/'model.ffn.blocks' only apply to structured ffn kinds, "
                 "not 'dense'")


def validate_model(m: ModelConfig, tp: int) -> None:
    for key in ("vocab_size", "hidden_size", "num_layers", "num_heads", "ffn_hidden_size", "seq_length"):
        _positive(getattr(m, key), f"model.{key}")
    _choice(m.norm, ("layernorm", "rmsnorm"), "model.norm")
    _choice(m.activation, ("gelu", "swiglu"), "model.activation")
    _positive(m.rope_base, "model.rope_base")
    _positive(m.init_std, "model.init_std")
    if m.head_dim is None:
        _divides(m.num_heads, m.hidden_size, "model.num_heads", "model.hidden_size")
    else:
        _positive(m.head_dim, "model.head_dim")
    _require(m.attn_head_dim % 2 == 0, f"head dim {m.attn_head_dim} must be even for RoPE "
                                       f"(model.hidden_size / model.num_heads or model.head_dim)")
    if m.num_kv_heads is not None:
        _positive(m.num_kv_heads, "model.num_kv_heads")
        _divides(m.num_kv_heads, m.num_heads, "model.num_kv_heads", "model.num_heads")
    _divides(tp, m.num_heads, "parallel.tensor", "model.num_heads")
    _divides(tp, m.kv_heads, "parallel.tensor", "model.num_kv_heads")
    _divides(tp, m.ffn_hidden_size, "parallel.tensor", "model.ffn_hidden_size")
    _divides(tp, m.vocab_size, "parallel.tensor", "model.vocab_size")
    validate_ffn(m, tp)


def validate(cfg: Config, world_size: Optional[int] = None) -> None:
    """Cheap checks only: everything here runs before any process group or tensor exists."""
    p, t, s = cfg.parallel, cfg.training, cfg.self_guided
    if p.sequence_parallel == "auto":  # a Config built in code, not through config_from_dict
        resolve_sequence_parallel(cfg)
    _positive(p.tensor, "parallel.tensor")
    _positive(p.pipeline, "parallel.pipeline")
    _choice(p.zero_stage, (0, 1, 2, 3), "parallel.zero_stage")
    _choice(p.partition_method, ("parameters", "uniform", "type:TransformerBlock"), "parallel.partition_method")
    validate_model(cfg.model, p.tensor)
    if p.sequence_parallel:
        _divides(p.tensor, cfg.model.seq_length, "parallel.tensor", "model.seq_length")
        _require(p.zero_stage < 3, "config key 'parallel.sequence_parallel' = true is not supported with "
                 "'parallel.zero_stage' = 3 (its partitioned replicated weights cannot take the tensor-group "
                 "gradient sum); use ZeRO 0, 1 or 2")
    _require(p.pipeline <= cfg.model.num_layers,
             f"config key 'parallel.pipeline' = {p.pipeline} exceeds 'model.num_layers' = "
             f"{cfg.model.num_layers}: a pipeline stage needs at least one block")
    _require(not (p.pipeline > 1 and p.zero_stage > 1),
             f"config key 'parallel.zero_stage' = {p.zero_stage} is not supported with pipeline "
             f"parallelism (parallel.pipeline = {p.pipeline}); DeepSpeed allows ZeRO stage 0 or 1 there")
    _choice(s.schedule, ("cosine", "linear"), "self_guided.schedule")
    _require(0.0 < s.guided_fraction <= 1.0,
             f"config key 'self_guided.guided_fraction' = {s.guided_fraction} must be in (0, 1]")
    if isinstance(s.flops_budget, str):
        _choice(s.flops_budget, ("dense",), "self_guided.flops_budget")
    else:
        _positive(s.flops_budget, "self_guided.flops_budget")
    if s.enabled:
        _require(cfg.model.ffn.kind != "dense",
                 "config key 'self_guided.enabled' = true needs a structured 'model.ffn.kind', got 'dense'")
    _require(t.precision != "fp8", "config key 'training.precision' = 'fp8' must be one of bf16, fp16, fp32; "
             "FP8 GEMMs run on top of bf16: --precision bf16 --fp8 (training.fp8.enabled)")
    _choice(t.precision, ("bf16", "fp16", "fp32"), "training.precision")
    for key in ("micro_batch_size", "global_batch_size", "log_interval", "eval_interval",
                "eval_iters", "save_interval", "keep_last", "max_nonfinite_steps", "checkpoint_interval"):
        _positive(getattr(t, key), f"training.{key}")
    if t.blocks_per_region != "auto":
        _require(isinstance(t.blocks_per_region, int) and not isinstance(t.blocks_per_region, bool)
                 and t.blocks_per_region > 0,
                 f"config key 'training.blocks_per_region' = {t.blocks_per_region!r} must be \"auto\" or a "
                 "positive whole number")
    _require((t.train_steps is None) != (t.train_tokens is None),
             "set exactly one of 'training.train_steps' and 'training.train_tokens'"
             f" (got {t.train_steps!r} and {t.train_tokens!r})")
    if t.train_steps is not None:
        _positive(t.train_steps, "training.train_steps")
    if t.exit_interval is not None:
        _positive(t.exit_interval, "training.exit_interval")
    if t.exit_duration_minutes is not None:
        _require(t.exit_duration_minutes > 0,
                 f"config key 'training.exit_duration_minutes' = {t.exit_duration_minutes} must be > 0")
    if t.train_tokens is not None:
        _positive(t.train_tokens, "training.train_tokens")
    o = cfg.optimizer
    _positive(o.lr, "optimizer.lr")
    _require(0.0 <= o.min_lr_ratio <= 1.0, f"config key 'optimizer.min_lr_ratio' = {o.min_lr_ratio} must be in [0, 1]")
    _require(0.0 <= o.warmup_fraction < 1.0, f"config key 'optimizer.warmup_fraction' = {o.warmup_fraction} must be in [0, 1)")
    _require(o.grad_clip >= 0.0, f"config key 'optimizer.grad_clip' = {o.grad_clip} must be >= 0")
    _choice(o.implementation, ("auto", "deepspeed", "fused"), "optimizer.implementation")
    _choice(o.update, ("auto", "torch", "compiled"), "optimizer.update")
    if o.implementation == "fused":
        _require(t.precision == "bf16", "config key 'optimizer.implementation' = 'fused' needs 'training.precision' "
                 f"= bf16, got {t.precision!r} (fp16 needs DeepSpeed's loss scaling, fp32 has no master weights)")
        _require(p.zero_stage in (0, 1), "config key 'optimizer.implementation' = 'fused' needs "
                 f"'parallel.zero_stage' = 0 or 1, got {p.zero_stage}; use implementation 'deepspeed' for ZeRO 2/3")
    for key in ("compile", "cuda_graphs", "cpp_wrapper"):
        value = getattr(t, key)
        _require(isinstance(value, bool) or value == "auto",
                 f"config key 'training.{key}' = {value!r} must be true, false or \"auto\"")
    if t.cuda_graphs is True and t.compile != "auto":  # with compile "auto", once it is resolved
        _require_cuda_graphs_allowed(cfg)
    _require(not (t.cpp_wrapper is True and t.compile is False),
             "config key 'training.cpp_wrapper' = true needs 'training.compile' = true or \"auto\": "
             "it is how the compiled blocks launch their kernels")
    validate_fp8(t)
    validate_profile(t.profile, world_size)
    d = cfg.data
    _require(len(d.paths) > 0, "config key 'data.paths' must name at least one dataset prefix")
    if d.weights is not None:
        _require(len(d.weights) == len(d.paths),
                 f"config key 'data.weights' has {len(d.weights)} entries but 'data.paths' has {len(d.paths)}")
        _require(all(w > 0 for w in d.weights), f"config key 'data.weights' = {d.weights} must be positive")
    parts = d.split.split(",")
    _require(len(parts) == 3 and all(x.strip().replace(".", "", 1).isdigit() for x in parts)
             and sum(float(x) for x in parts) > 0,
             f"config key 'data.split' = {d.split!r} must be three numbers like '969,30,1'")
    _require(not any(k in cfg.deepspeed for k in _DEEPSPEED_OWNED),
             f"config key 'deepspeed' may not set {sorted(set(cfg.deepspeed) & set(_DEEPSPEED_OWNED))}: "
             "they are derived from training/parallel/optimizer")
    for machine, overrides in cfg.layouts.items():
        _require(isinstance(overrides, list) and all(isinstance(o, str) and "=" in o for o in overrides),
                 f"config key 'layouts.{machine}' must be a list of 'key.path=value' overrides, got {overrides!r}")
    if world_size is not None:
        check_layout(cfg, world_size)


def validate_profile(f: ProfileConfig, world_size: Optional[int]) -> None:
    """training.profile: a non-empty step range from step 1 on, and ranks of this world."""
    _positive(f.start_step, "training.profile.start_step")
    _require(f.end_step > f.start_step, f"config key 'training.profile.end_step' = {f.end_step} must be after "
             f"'training.profile.start_step' = {f.start_step} (steps start_step .. end_step - 1 are profiled)")
    _require(isinstance(f.ranks, list) and len(f.ranks) > 0 and all(isinstance(r, int) and r >= 0 for r in f.ranks),
             f"config key 'training.profile.ranks' = {f.ranks!r} must be a non-empty list of global ranks")
    if world_size is not None:
        _require(max(f.ranks) < world_size, f"config key 'training.profile.ranks' = {f.ranks} names a rank "
                 f"outside this world of {world_size} (ranks 0..{world_size - 1})")


def validate_fp8(t: "TrainingConfig") -> None:
    """training.fp8: known choices, a format rowwise scaling can run, and bf16 around it."""
    f = t.fp8
    _choice(f.scaling, FP8_SCALINGS, "training.fp8.scaling")
    _choice(f.grad_format, FP8_GRAD_FORMATS, "training.fp8.grad_format")
    _choice(f.layers, FP8_LAYERS, "training.fp8.layers")
    _require(not (f.scaling == "rowwise" and f.grad_format == "e5m2"),
             "config key 'training.fp8.grad_format' = 'e5m2' is not available with 'training.fp8.scaling' = "
             "'rowwise': cuBLAS runs rowwise-scaled FP8 products in e4m3 only; use 'e4m3' or 'auto'")
    _require(not (f.keep_casts and f.scaling == "rowwise"),
             "config key 'training.fp8.keep_casts' = true needs 'training.fp8.scaling' = 'tensorwise': rowwise "
             "scaling casts each operand along another axis for backward, so forward's casts cannot be reused")
    if f.enabled:
        _require(t.precision == "bf16", "config key 'training.fp8.enabled' = true needs 'training.precision' = "
                 f"bf16, got {t.precision!r}: FP8 products take bf16 activations and give bf16 outputs")


# Opt-in for CUDA graphs under tensor parallelism: the first 2-GPU run hung, so the config
# refuses the combination unless this is set to 1 (to diagnose it, or on a fake process group,
# tools/emulate_rank.py, where the collectives move nothing).
EXPERIMENTAL_TP_CUDA_GRAPHS_ENV = "MEGATRON_SFFN_EXPERIMENTAL_TP_CUDA_GRAPHS"


def cuda_graphs_refusal(cfg: Config) -> Optional[str]:
    """Why this config may not replay its blocks as CUDA graphs (the error for an explicit
    `true`), or None. A replay writes its outputs into the same memory every time: only where
    nothing keeps a block's outputs past the next replay of that block (one forward, then its
    backward; the fused optimizer takes each gradient as it arrives) is that known to be safe.
    "auto" turns them on exactly where this returns None, so loosening a rule here loosens both."""
    t, p, o = cfg.training, cfg.parallel, cfg.optimizer
    key = "config key 'training.cuda_graphs' = true"
    if t.compile is not True:
        return f"{key} needs 'training.compile' = true (--compile): the graphs are the compiled blocks'"
    if not (p.tensor == 1 or os.environ.get(EXPERIMENTAL_TP_CUDA_GRAPHS_ENV) == "1"):
        return (f"{key} needs 'parallel.tensor' = 1, got {p.tensor}: with the tensor-parallel "
                "collectives inside the replayed graphs the first 2-GPU run hung (docs/performance.md); "
                f"use --compile alone there (or set {EXPERIMENTAL_TP_CUDA_GRAPHS_ENV}=1 to try it)")
    if p.pipeline != 1:
        return (f"{key} needs 'parallel.pipeline' = 1, got {p.pipeline}: the pipeline engine runs "
                "several forwards of a block before their backwards, and a replay would overwrite the saved ones")
    if t.activation_checkpointing:
        return (f"{key} needs 'training.activation_checkpointing' = false: "
                "recomputing a block in backward replays its forward while its outputs are still in use")
    fused = fused_optimizer_runs(cfg)
    if not fused:
        return (f"{key} needs the fused optimizer ('optimizer.implementation' = fused or auto, with "
                f"'training.precision' = bf16 and 'parallel.zero_stage' 0 or 1), got implementation "
                f"{o.implementation!r}, precision {t.precision!r}, ZeRO {p.zero_stage}: DeepSpeed's optimizers keep "
                "gradients across micro-batches that the next replay would overwrite")
    return None


def cpp_wrapper_refusal(cfg: Config) -> Optional[str]:
    """Why the compiled blocks of this config cannot launch through Inductor's C++ wrapper, or
    None. Under tensor parallelism the blocks' graphs call torch's functional collectives, and
    the wrapper can call an op only if it can type every argument: torch 2.13 types the
    collectives' group name as Any, which it cannot (torch 2.11 types it str)."""
    if cfg.parallel.tensor == 1 or not cfg.training.trace_collectives:
        return None
    import torch
    schema = torch.ops._c10d_functional.all_gather_into_tensor.default._schema
    if any(str(arg.real_type) == "Any" for arg in schema.arguments):
        return ("config key 'training.cpp_wrapper' = true needs 'parallel.tensor' = 1 with torch "
                f"{torch.__version__}: the tensor-parallel collectives traced into the blocks take a group "
                "name typed Any, which Inductor's C++ wrapper cannot pass (torch 2.11 types it str); "
                "set training.cpp_wrapper to false or \"auto\"")
    return None


def _require_cuda_graphs_allowed(cfg: Config) -> None:
    refusal = cuda_graphs_refusal(cfg)
    if refusal:
        raise ConfigError(refusal)


# DeepSpeed keys derived from our own sections; setting them twice would let them disagree.
_DEEPSPEED_OWNED = ("train_batch_size", "train_micro_batch_size_per_gpu", "gradient_accumulation_steps",
                    "gradient_clipping", "bf16", "fp16", "optimizer", "scheduler")


def check_layout(cfg: Config, world_size: int) -> int:
    """Return the data-parallel size for `world_size` ranks, or raise naming the mismatch."""
    p, t = cfg.parallel, cfg.training
    model_parallel = p.tensor * p.pipeline
    _require(world_size % model_parallel == 0,
             f"world size {world_size} is not a multiple of parallel.tensor x parallel.pipeline = "
             f"{p.tensor} x {p.pipeline} = {model_parallel}")
    dp = world_size // model_parallel
    _require(t.global_batch_size % (t.micro_batch_size * dp) == 0,
             f"config key 'training.global_batch_size' = {t.global_batch_size} must be a multiple of "
             f"training.micro_batch_size x data-parallel size = {t.micro_batch_size} x {dp}")
    return dp


def train_steps(cfg: Config) -> int:
    """Optimizer steps the run plans before any same-FLOPs repeat phase."""
    t = cfg.training
    if t.train_steps is not None:
        return t.train_steps
    tokens_per_step = t.global_batch_size * cfg.model.seq_length
    return max(1, math.ceil(t.train_tokens / tokens_per_step))
