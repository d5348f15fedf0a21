#!/usr/bin/env bash
# The GPU measurements behind docs/performance.md, as a few suites behind one entry point:
#   benchmarks/gpu/run.sh                        list the suites
#   benchmarks/gpu/run.sh SUITE OUT [ARGS ...]    run one, writing into the folder OUT
# A suite is suites/SUITE.sh: its first line says what it measures, the lines after it its ARGS
# (mostly case names; environment variables such as CONFIG, STEPS or GPUS adjust a case). Each
# runs from the repository root after setup_env.sh (the lent machines' settings, and the wheels
# of make_wheels.sh where deepspeed is not importable). Each case fits one 10-minute call.
set -uo pipefail
here=$(cd "$(dirname "$0")" && pwd)
suites=$(cd "$here/suites" && for f in *.sh; do echo "${f%.sh}"; done)
if [ $# -eq 0 ] || [ "$1" = --list ] || [ "$1" = -h ] || [ "$1" = --help ]; then
  echo "usage: benchmarks/gpu/run.sh SUITE OUT [ARGS ...]   (ARGS: see benchmarks/gpu/suites/SUITE.sh)"
  echo "suites:"
  for s in $suites; do printf '  %-10s %s\n' "$s" "$(head -1 "$here/suites/$s.sh" | sed 's/^# *//')"; done
  exit 0
fi
suite=$1
if [ ! -f "$here/suites/$suite.sh" ]; then
  echo "error: unknown suite '$suite' (suites: $(echo $suites))" >&2
  exit 2
fi
if [ $# -lt 2 ]; then
  echo "error: suite '$suite' needs an output folder: benchmarks/gpu/run.sh $suite OUT [ARGS ...]" >&2
  exit 2
fi
out=$2; shift 2
mkdir -p "$out"; out=$(cd "$out" && pwd)
cd "$here/../.."
. benchmarks/gpu/setup_env.sh
. "benchmarks/gpu/suites/$suite.sh" "$@"
