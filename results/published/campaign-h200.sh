#!/usr/bin/env bash
# How the long reference runs are made on a lent H200, one device command at a time (each at
# most 10 minutes; the machine stays held while the next command follows within seconds).
#
#   bash results/published/campaign-h200.sh probe            # MPS on; packing measured
#   bash results/published/campaign-h200.sh start JOBS ARGS  # the sweep, in the background
#   bash results/published/campaign-h200.sh wait SECONDS     # progress, until done or SECONDS
#   bash results/published/campaign-h200.sh collect NAME     # the log and console to $OUT
#   bash results/published/campaign-h200.sh round SECONDS NAME JOBS ARGS  # all four in one command
#   bash results/published/campaign-h200.sh stop             # cut the sweep: runs end KILLED
#   bash results/published/campaign-h200.sh snapshot NAME    # log and console to $OUT, sweep left running
#
# `start` runs `suite run ARGS --jobs JOBS --tracking-uri jsonl:...` in a process session of its
# own (setsid), so it outlives the command that started it; the offline log of earlier sessions
# (PRELOAD, a .jsonl.gz) is copied in first, so that its finished cells are skipped (same
# config hash: run the campaign's own commit). The sweep runs from a copy of the code under
# $CAMP/code: the next device command replaces the checkout (and every folder it carries), and
# a process whose working directory was replaced fails at its next import. `round` starts,
# waits, stops what has not ended by SECONDS (those runs end KILLED) and collects, in one
# command: a round that fits in one command cannot be lost to a gap between commands. CUDA MPS
# lets the cells' kernels share the GPU at once instead of taking turns (see the ledger for
# what it measured). A round longer than one command leaves its sweep running between `wait`
# commands and takes a `snapshot` of the log at the end of each. Its checkpoints cannot follow:
# the checkpoint folder of three `long` MQMTAR cells (weights and Adam moments) measured 495 MB
# on 2026-12-05, far over what one file from $OUT (16 MiB) or a whole carried tree (64 MiB) may
# be, so a cell resumes only on the machine it started on.
set -u
CAMP=${CAMP:-/tmp/camp}
mkdir -p "$CAMP"
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1 SUITE_CHECKPOINT_DIR=$CAMP/ckpt
export CUDA_MPS_PIPE_DIRECTORY=$CAMP/mps-pipe CUDA_MPS_LOG_DIRECTORY=$CAMP/mps-log
LOG=$CAMP/log.jsonl
# this campaign's sweep only (another CAMP's sweep may run beside it); the bracket keeps pgrep
# from matching its own command line
SWEEP="[s]uite run .*--tracking-uri jsonl:$LOG"
OUT=${OUT:-$CAMP/out}
mkdir -p "$OUT"

progress() {
  date -u +%H:%M:%S
  grep -hE "done in|FAILED|Traceback|Error|taking over|NON-FINITE" "$CAMP/console.txt" 2>/dev/null
  for f in /tmp/suite-cells-*/cell-*.jsonl; do
    [ -f "$f" ] || continue
    name=$(grep -m1 '"event": "start"' "$f" | python3 -c \
      'import json,sys; r=json.loads(sys.stdin.read()); print(r["name"])' 2>/dev/null)
    last=$(grep '"train_loss"' "$f" | tail -1 | python3 -c \
      'import json,sys; r=json.loads(sys.stdin.read()); v=r["values"]; print(r["step"], "loss %.4f" % v["train_loss"], "tok/s %.0f" % v["tokens_per_s"])' 2>/dev/null)
    val=$(grep '"val_exact_match"' "$f" | tail -1 | python3 -c \
      'import json,sys; r=json.loads(sys.stdin.read()); print("val em %.1f @%d" % (r["values"]["val_exact_match"], r["step"]))' 2>/dev/null)
    echo "  $name: step $last; $val"
  done
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader
}

case "${1:-}" in
  probe)
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
    python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"
    nvidia-cuda-mps-control -d && echo "MPS control daemon started"
    python3 -m suite bench --train --device cuda --task mqmtar --attention softmax \
      --cells "${2:-1,3}" --train-steps 1500 --warmup 10 --no-log --out "$OUT/mps-probe.json"
    ;;
  start)
    jobs=$2; shift 2
    if [ "$PWD" != "$CAMP/code" ]; then
      rm -rf "$CAMP/code" && mkdir -p "$CAMP/code" && cp -r attentions tasks suite results "$CAMP/code/"
      cp "$0" "$CAMP/code/campaign-h200.sh"
      cd "$CAMP/code" && export PYTHONPATH=$PWD
    fi
    if [ -n "${PRELOAD:-}" ] && [ ! -f "$LOG" ]; then gzip -dc "$PRELOAD" > "$LOG"; fi
    pgrep -f nvidia-cuda-mps-control >/dev/null || nvidia-cuda-mps-control -d
    echo "# $(date -u +%FT%TZ) suite run $* --jobs $jobs --no-progress --tracking-uri jsonl:$LOG" \
      >> "$CAMP/console.txt"
    setsid nohup python3 -m suite run "$@" --jobs "$jobs" --no-progress \
      --tracking-uri "jsonl:$LOG" >> "$CAMP/console.txt" 2>&1 < /dev/null &
    sleep 5; progress
    ;;
  wait)
    end=$((SECONDS + $2))
    while [ $SECONDS -lt $end ] && pgrep -f "$SWEEP" >/dev/null; do sleep 15; done
    progress
    pgrep -f "$SWEEP" >/dev/null && echo "sweep still running" || echo "sweep ended"
    ;;
  stop)
    pkill -TERM -f "$SWEEP"; sleep 20; progress
    ;;
  collect)
    gzip -9c "$LOG" > "$OUT/$2.jsonl.gz"
    cp "$CAMP/console.txt" "$OUT/$2.console.txt"
    ls -la "$OUT"
    ;;
  snapshot)
    bash "$0" collect "$2"
    du -sh "$CAMP/ckpt" 2>/dev/null
    ;;
  round)
    secs=$2 name=$3; shift 3
    bash "$0" start "$@"
    bash "$0" wait "$secs"
    pgrep -f "$SWEEP" >/dev/null && bash "$0" stop
    bash "$0" collect "$name"
    ;;
  *)
    echo "usage: $0 probe|start JOBS ARGS|wait SECONDS|stop|collect NAME|snapshot NAME|round SECONDS NAME JOBS ARGS" >&2
    exit 2 ;;
esac
