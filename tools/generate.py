#!/usr/bin/env python
"""Generate text from a checkpoint, with pre-merge dispatch for the structured FFNs.

    python tools/generate.py --load CKPT --prompt "The history of" [--prompt ...]
        [--max-new-tokens 64 --temperature 0.8 --top-k 50 --top-p 0.95] [--pre-merge auto|on|off]
        [--cuda-graphs]
    python tools/generate.py --load CKPT --calibrate      # measure the pre-merge crossover here

CKPT is a consolidated checkpoint (tools/convert_checkpoint.py --to consolidated) or a run
folder / DeepSpeed checkpoint, which is consolidated on the fly.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron_sffn.inference.cuda_graph import unavailable_reason  # noqa: E402
from megatron_sffn.inference.generation import SamplingConfig, check_sampling, generate  # noqa: E402
from megatron_sffn.inference.premerge import (DEFAULT_CALIBRATION, apply_premerge, calibrate,  # noqa: E402
                                              load_thresholds, save_calibration)
from tools.checkpoint_io import load_single_rank_model, resolve_tokenizer  # noqa: E402


def initialised_model(config_path: str, device, dtype):
    """(GPTModel with the config's seeded initial weights, Config); ConfigError is a ValueError."""
    from megatron_sffn.config import load_config
    from megatron_sffn.model import GPTModel
    cfg = load_config(config_path)
    model = GPTModel(cfg.model).to(device).initialize(seed=cfg.training.seed, device=device)  # SVD inits on the GPU
    return model.to(dtype=dtype).eval(), cfg


def print_calibration(results) -> None:
    """Per layer shape: latency of the factors and of the merged matrix per tokens in flight."""
    for sig, r in results.items():
        print(f"{sig}: merged matrix up to {r['threshold']} tokens in flight, factors above")
        print(f"  {'tokens':>7} {'structured ms':>14} {'merged ms':>10} {'merged/structured':>18} {'picks':>11}")
        for row in r["timings"]:
            picks = "merged" if row["tokens"] <= r["threshold"] else "structured"
            print(f"  {row['tokens']:>7} {1e3 * row['structured_s']:>14.4f} {1e3 * row['merged_s']:>10.4f} "
                  f"{row['merged_s'] / row['structured_s']:>18.2f} {picks:>11}")


def describe_threshold(signature: str, threshold: int) -> str:
    """How a pre-merge threshold reads in the summary line ('on' stores an unreachable bound)."""
    if threshold < 0:
        return f"{signature} off"
    return f"{signature} always merged" if threshold >= 1 << 62 else f"{signature} merged up to {threshold} tokens"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--load", help="consolidated checkpoint, run folder or DeepSpeed checkpoint")
    source.add_argument("--config", help="a run config instead: randomly initialised weights, for --calibrate and "
                                         "speed measurements at a model size no checkpoint exists for yet")
    p.add_argument("--prompt", action="append", default=[], help="prompt text (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pre-merge", choices=["auto", "on", "off"], default="auto",
                   help="auto: merged dense matrix below the calibrated token count, factors above")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="decode each token by replaying a captured CUDA graph (falls back to eager without CUDA)")
    p.add_argument("--calibrate", action="store_true", help="measure the pre-merge crossover on this device")
    p.add_argument("--calibration-file", default=DEFAULT_CALIBRATION)
    p.add_argument("--tokenizer-model", default=None, help="default: the one the run was trained with")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dtype", choices=["bf16", "fp32"], default="bf16" if torch.cuda.is_available() else "fp32")
    p.add_argument("--json", default=None, help="also write the outputs (and dispatch) to this JSON file")
    args = p.parse_args(argv)
    try:   # before the checkpoint is read
        check_sampling(SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p))
    except ValueError as e:
        flag = str(e).split(" ")[0].replace("_", "-")
        p.error(f"--{flag}{str(e)[len(flag):]}")
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float32
    try:
        model, cfg = (load_single_rank_model(args.load, args.device, dtype) if args.load
                      else initialised_model(args.config, args.device, dtype))
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if model.guide_state.active:
        if model.guide_state.alpha > 0:
            print(f"note: {args.load} is inside the self-guided phase (guide weight {model.guide_state.alpha:.3f}); "
                  "generating with the structured layers alone", file=sys.stderr)
        model.drop_guides()  # inference uses the structured layers the run ends with
    if args.calibrate:
        results = calibrate(model)
        save_calibration(args.calibration_file, args.device, results)
        print_calibration(results)
        print(f"saved to {args.calibration_file}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": str(args.device), "dtype": args.dtype, "layers": results}, f, indent=2)
        return 0
    if not args.prompt:
        print("error: give at least one --prompt (or --calibrate)", file=sys.stderr)
        return 2
    try:
        tok = resolve_tokenizer(args.tokenizer_model or cfg.data.tokenizer_model, cfg)
    except (FileNotFoundError, RuntimeError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if tok.vocab_size > cfg.model.vocab_size:
        name = getattr(tok, "model_path", "of the run")
        print(f"error: tokenizer {name} has {tok.vocab_size} ids, the checkpoint's vocabulary only "
              f"{cfg.model.vocab_size}: they do not belong together (--tokenizer-model)", file=sys.stderr)
        return 2
    chosen = apply_premerge(model, args.pre_merge, load_thresholds(args.calibration_file, args.device))
    # Training documents follow an end-of-document token (preprocess --append-eod), never a BOS:
    # start each prompt the way a document starts there.
    prompts = [[tok.eos_id] + tok.encode(text) for text in args.prompt]
    sampling = SamplingConfig(args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed,
                              stop_token=tok.eos_id, vocab_limit=tok.vocab_size)
    reason = unavailable_reason(args.device) if args.cuda_graphs else None
    if reason:
        print(f"warning: --cuda-graphs: {reason}; decoding eagerly", file=sys.stderr)
    graphs = args.cuda_graphs and not reason
    if str(args.device).startswith("cuda"):  # kernels and library handles load outside the timed call
        generate(model, prompts, dataclasses.replace(sampling, max_new_tokens=2), cuda_graphs=graphs)
        torch.cuda.synchronize()
    start = time.perf_counter()
    outputs = generate(model, prompts, sampling, cuda_graphs=graphs)  # the timing includes the graph's capture
    if str(args.device).startswith("cuda"):
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    # decode prompt + continuation together: sentencepiece drops a leading space when decoding alone
    texts = [tok.decode(p[1:] + o)[len(tok.decode(p[1:])):] for p, o in zip(prompts, outputs)]
    for prompt, text in zip(args.prompt, texts):
        print(f"--- {prompt!r}\n{prompt}{text}\n")
    new_tokens = sum(len(o) for o in outputs)
    print(f"{new_tokens} tokens in {elapsed:.2f} s ({new_tokens / elapsed:.1f} tokens/s), "
          f"{'CUDA graphs' if graphs else 'eager'}, pre-merge {args.pre_merge}: "
          + ", ".join(describe_threshold(k, v) for k, v in chosen.items()))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"prompts": args.prompt, "outputs": texts, "tokens": outputs, "pre_merge": chosen,
                       "cuda_graphs": graphs, "seconds": elapsed}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
