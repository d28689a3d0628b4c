#!/usr/bin/env bash
# The CPU benches that need nothing beyond requirements.txt, in one command; each prints its own table with the
# machine and its load. Run it on a quiet machine: other jobs on the cores change every figure.
#
#   bash bench/cpu.sh [SECTION ...]        sections: roofline lockstep (default: both)
#   roofline  each phase of an iteration against this CPU's matrix-product throughput and memory bandwidth
#             (bench/roofline.py, float32 and bfloat16, 1 thread)
#   lockstep  the paper's ten word-search targets one at a time and in lockstep, migrate and random, 3 iterations
#             each: the ratio per phase and end to end (bench/lockstep.py, 1 thread)
# The others (bench/iteration.py, sampler.py, logprob.py, update_memory.py, prompt_parse.py, oracles.py) compare
# against transformers + peft or take longer; their docstrings say how to run them.
set -uo pipefail
cd "$(dirname "$0")/.."
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(roofline lockstep)
for s in "${sections[@]}"; do
    echo "## $s"
    case $s in
        roofline) python bench/roofline.py --threads 1 ;;
        lockstep) python bench/lockstep.py --threads 1 ;;
        *) echo "unknown section $s (roofline, lockstep)" ;;
    esac
done
