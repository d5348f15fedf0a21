#!/usr/bin/env bash
# Train a config for N steps on one node, then resume from a mid-run checkpoint and compare
# the two loss curves step by step (what issue 5 asks of a GPU run).
#   benchmarks/gpu/resume_check.sh OUT_DIR RESUME_TAG [pretrain.py args ...]
# e.g. benchmarks/gpu/resume_check.sh /tmp/out step00000100 --config configs/1p3b_lowrank_sgt.json \
#        --train-steps 140 --save-interval 100 --data-path embedded
set -euo pipefail
out=$1; tag=$2; shift 2
run=$out/run
mkdir -p "$out"
launch() { if [ "${NPROC:-1}" -gt 1 ]; then deepspeed --num_gpus "$NPROC" launchers/pretrain.py "$@"; \
           else python3 launchers/pretrain.py "$@"; fi; }
launch "$@" --run-dir "$run" 2>&1 | grep -v "^\[20" | tee "$out/uninterrupted.log"
cp "$run/metrics.jsonl" "$out/metrics_uninterrupted.jsonl"
echo "$tag" > "$run/checkpoints/latest"          # as if the run had stopped right after $tag
launch "$@" --run-dir "$run" 2>&1 | grep -v "^\[20" | tee "$out/resumed.log"
cp "$run/metrics.jsonl" "$out/metrics_resumed.jsonl"
python3 - "$out" "$tag" <<'PY'
import json, sys
out = sys.argv[1]
def load(name):
    with open(f"{out}/{name}") as f:
        return {r["step"]: r for r in map(json.loads, filter(str.strip, f))}
a, b = load("metrics_uninterrupted.jsonl"), load("metrics_resumed.jsonl")
steps = sorted(set(a) & set(b))
resumed = [s for s in steps if s > int(sys.argv[2].replace("step", ""))]
diffs = [abs(a[s]["loss"] - b[s]["loss"]) / abs(a[s]["loss"]) for s in resumed]
print(f"steps compared after the resume: {len(resumed)} ({resumed[0] if resumed else '-'}..{resumed[-1] if resumed else '-'})")
print(f"max relative loss difference: {max(diffs) if diffs else float('nan'):.3e}; "
      f"bit-identical steps: {sum(d == 0 for d in diffs)}")
for s in resumed[:3] + resumed[-3:]:
    print(f"  step {s}: uninterrupted {a[s]['loss']:.6f} resumed {b[s]['loss']:.6f}")
json.dump({"steps": resumed, "max_rel_diff": max(diffs) if diffs else None,
           "uninterrupted": {s: a[s]["loss"] for s in resumed}, "resumed": {s: b[s]["loss"] for s in resumed}},
          open(f"{out}/resume_compare.json", "w"), indent=1)
PY
