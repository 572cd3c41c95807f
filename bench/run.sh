#!/usr/bin/env bash
# The main job on a fresh machine: set up .venv, build fusedopt, run the benchmark.
# Without arguments it runs the quick CPU comparison (`fusedopt-bench --quick`, under a minute); any arguments
# are passed to fusedopt-bench instead, e.g.  bash bench/run.sh --device cpu --json out.json --plot out.png
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
if [ "$#" -eq 0 ]; then
  set -- --quick
fi
exec .venv/bin/fusedopt-bench "$@"
