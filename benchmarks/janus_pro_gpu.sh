#!/usr/bin/env bash
# The GPU benchmarks at full size: a random Janus-Pro-1B-shaped checkpoint (unigap.model.save_random_janus_pro) in
# bf16, image-token sampling at batch 16 and 128 (benchmarks/sampling.py) and the DPO step's MFU over batch sizes
# (benchmarks/dpo_step.py; 16 pairs per task ran out of an H200's memory), then the DPO step again with activation
# checkpointing at larger batches (CHECKPOINTED_BATCHES; empty skips it), and what a `refine train` step holds by
# --micro-batch-size (benchmarks/grpo_memory.py; GRPO_MICRO, empty skips it). One part failing does not stop the
# others; each writes its JSON when done (the first two after every batch size).
#
#   bash benchmarks/janus_pro_gpu.sh [OUT_DIR]          # default benchmarks/results
#   SIZE=tiny DEVICE=cpu DTYPE=float32 SAMPLING_BATCHES="2" DPO_BATCHES="1 2" bash benchmarks/janus_pro_gpu.sh /tmp/x
# SAMPLING_TIMEOUT / DPO_TIMEOUT / GRPO_TIMEOUT (seconds, default none) bound each part on a rented machine.
set -uo pipefail
out=${1:-benchmarks/results}
py=${PY:-python3}
size=${SIZE:-1b}
device=${DEVICE:-cuda}
dtype=${DTYPE:-bfloat16}
checkpoint=${CHECKPOINT:-/tmp/janus-pro-$size}
case $size in tiny|1b|7b) ;; *) echo "SIZE must be tiny, 1b or 7b, got '$size'" >&2; exit 2 ;; esac
mkdir -p "$out"
status=0
$py -c "import sys, torch; from unigap.model import save_random_janus_pro
save_random_janus_pro(sys.argv[1], sys.argv[2], device=sys.argv[3], dtype=getattr(torch, sys.argv[4]))" \
    "$checkpoint" "$size" "$device" "$dtype" || exit 1
timeout "${SAMPLING_TIMEOUT:-0}" $py benchmarks/sampling.py --model "$checkpoint" --device "$device" --dtype "$dtype" \
    --batch-sizes ${SAMPLING_BATCHES:-16 128} --repeats ${REPEATS:-2} --out "$out/sampling_janus_pro_$size.json" || status=1
timeout "${DPO_TIMEOUT:-0}" $py benchmarks/dpo_step.py --model "$checkpoint" --device "$device" --dtype "$dtype" \
    --batch-sizes ${DPO_BATCHES:-1 4 8} --steps 2 --repeats ${REPEATS:-2} --out "$out/dpo_step_janus_pro_$size.json" || status=1
checkpointed=${CHECKPOINTED_BATCHES-16 32}
if [ -n "$checkpointed" ]; then
    timeout "${DPO_TIMEOUT:-0}" $py benchmarks/dpo_step.py --model "$checkpoint" --device "$device" --dtype "$dtype" \
        --batch-sizes $checkpointed --gradient-checkpointing --steps 2 --repeats ${REPEATS:-2} \
        --out "$out/dpo_step_checkpointed_janus_pro_$size.json" || status=1
fi
micro=${GRPO_MICRO-4 1}
if [ -n "$micro" ]; then
    timeout "${GRPO_TIMEOUT:-0}" $py benchmarks/grpo_memory.py --model "$checkpoint" --device "$device" --dtype "$dtype" \
        --micro-batch-sizes $micro --repeats 1 --out "$out/grpo_memory_janus_pro_$size.json" || status=1
fi
exit $status
