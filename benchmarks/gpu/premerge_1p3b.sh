#!/usr/bin/env bash
# Pre-merge on one GPU for a config's structured FFNs: calibrate the crossover, then generate
# greedily with the factors only (off) and with the dispatcher (auto), 1 and 16 prompts.
#   benchmarks/gpu/premerge_1p3b.sh OUT_DIR [CONFIG]
set -uo pipefail
out=$1; config=${2:-configs/1p3b_lowrank.json}; mkdir -p "$out"
python3 tools/generate.py --config "$config" --calibrate --calibration-file "$out/premerge.json" \
    --json "$out/calibration.json" 2>&1 | grep -v "^\[20\|Warning"
prompts=(); for i in $(seq 16); do prompts+=(--prompt "Chapter $i. The history of the"); done
for pm in off auto; do
  for n in 1 16; do
    echo "pre-merge $pm, $n prompt(s):"
    python3 tools/generate.py --config "$config" --tokenizer-model embedded --calibration-file "$out/premerge.json" \
        --pre-merge "$pm" --max-new-tokens 64 --temperature 0 "${prompts[@]:0:$((2 * n))}" \
        --json "$out/generate_${pm}_$n.json" 2>&1 | tail -1
  done
done
