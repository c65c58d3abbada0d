#!/usr/bin/env bash
# The GPU checks of the node's inner loop (bench/gpu_check.py), one JSON line per measure:
#   tokens/s and MFU of base and 1b in bf16 on one GPU (train_round, the one-device node),
#   the same with FSDP2 over every GPU of the machine (torchrun workers, sharded_round),
#   DP-SGD at 1b: hooks and ghost on one GPU, ghost on the FSDP workers.
# Each check has its own time limit: together under 10 minutes (590 s).
#
#   bash bench/gpu_check.sh            # on a CUDA machine, from the repository root
#   bash bench/gpu_check.sh --cpu      # the smoke run: debug preset on the CPU, 2 gloo workers
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python
export PYTHONPATH=${PYTHONPATH:-.} OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
# each round saves the node's state (1b: ~10 GB of AdamW moments): memory, not a disk
[ -d /dev/shm ] && export TMPDIR=${TMPDIR:-/dev/shm}

if [ "${1:-}" = "--cpu" ]; then
  common=(--device cpu --preset debug --batch 4 --seq 64 --short 1 --long 3)
  GPUS=2
  BIG=debug
else
  common=(--device cuda)
  GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())")
  BIG=1b
  if [ "$GPUS" -lt 1 ]; then
    echo '{"measure": "none", "error": "no CUDA GPU visible"}'
    exit 1
  fi
fi

check() {  # LIMIT_S ARGS...: one measure; a failure or time-out is a JSON line, not a stop
  local limit=$1
  shift
  timeout "$limit" "$@" 2>/tmp/gpu_check.err | grep '^{' || {
    echo "{\"measure\": \"failed\", \"command\": \"$*\", \"tail\": $(tail -c 400 /tmp/gpu_check.err | "$PY" -c 'import json,sys; print(json.dumps(sys.stdin.read()))')}"
  }
}

run=("$PY" bench/gpu_check.py)
dist=("$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" bench/gpu_check.py)
if [ "${1:-}" = "--cpu" ]; then
  check 300 "${run[@]}" one "${common[@]}"
  check 300 "${run[@]}" one "${common[@]}" --dp ghost
  check 300 "${run[@]}" one "${common[@]}" --dp hooks
  check 300 "${dist[@]}" workers "${common[@]}"
  check 300 "${dist[@]}" workers "${common[@]}" --dp ghost
  exit 0
fi
check 30 "$PY" -c "import torch, json; print(json.dumps({'measure': 'machine', 'gpus': torch.cuda.device_count(), 'gpu': torch.cuda.get_device_name(0), 'torch': torch.__version__}))"
check 60 "${run[@]}" one "${common[@]}" --preset base --batch 16 --seq 1024
check 100 "${run[@]}" one "${common[@]}" --preset "$BIG" --batch 8 --seq 2048
check 60 "${dist[@]}" workers "${common[@]}" --preset base --batch 16 --seq 1024
check 100 "${dist[@]}" workers "${common[@]}" --preset "$BIG" --batch 8 --seq 2048
# DP-SGD at 1b: the overhead is the ratio to the plain line at the same batch and length
dp=(--preset "$BIG" --batch 4 --seq 1024 --short 1 --long 4)
check 60 "${run[@]}" one "${common[@]}" "${dp[@]}"
check 60 "${run[@]}" one "${common[@]}" "${dp[@]}" --dp ghost
check 60 "${run[@]}" one "${common[@]}" "${dp[@]}" --dp hooks
check 60 "${dist[@]}" workers "${common[@]}" "${dp[@]}" --dp ghost
