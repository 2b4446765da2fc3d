#!/usr/bin/env bash
# The device check: run once, as one command, when a GPU machine is lent (it has torch, timm, typer, seaborn,
# pandas, pyarrow, safetensors; kornia, kornia-rs and mlxtend travel as wheels, full MNIST gzipped).
#
#   here:   make gpu-pack            # -> .gpu/ (wheels for Python 3.12 + MNIST .gz, about 15 MB; git-ignored)
#   there:  bash experiments/gpu.sh  # with .gpu carried; figures and logs go to $OUT (or gpu-out/)
#
# Steps, each under its own time limit so one slow step cannot eat the rest (GPU_BUDGET_S, default 540 s):
#   1. capsprobe bench --device cuda (bf16 autocast), then with --channels-last
#   2. the paper CapsNet, 1 epoch on the 60,000 training digits (54,000 + 6,000 validation), AMP: epoch time
#   3. as much of `experiments/*.toml --size paper` as the remaining budget allows (robustness first)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
BUDGET=${GPU_BUDGET_S:-540}
START=$SECONDS
left() { echo $((BUDGET - (SECONDS - START))); }
log() { echo "[gpu.sh $(date -u +%H:%M:%S) +$((SECONDS - START))s] $*" | tee -a "$OUT/gpu.log"; }
export PYTHONUNBUFFERED=1

python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/wheels/*.whl \
    || { log "wheel install failed"; exit 1; }
export PYTHONPATH="/tmp/site:$PWD"
mkdir -p /tmp/data/MNIST/raw
for f in .gpu/MNIST/raw/*.gz; do gunzip -c "$f" > "/tmp/data/MNIST/raw/$(basename "$f" .gz)"; done
CAPS="python3 -m capsprobe"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$OUT/gpu.log"
python3 -c "import torch, timm, kornia; print('torch', torch.__version__, 'timm', timm.__version__, 'kornia', kornia.__version__)" | tee -a "$OUT/gpu.log"

log "1. bench"
timeout 150 $CAPS bench --device cuda --model capsnet --model capsnet_small --model baseline_cnn --model resnet18 2>&1 | tee -a "$OUT/bench.md"
timeout 90 $CAPS bench --device cuda --channels-last --model capsnet --model resnet18 2>&1 | tee -a "$OUT/bench.md"

log "2. paper capsnet, 1 epoch of full MNIST, AMP"
timeout $(( $(left) > 60 ? 200 : 1 )) $CAPS train --model capsnet --dataset mnist --data-root /tmp/data --no-download \
    --device cuda --epochs 1 --out /tmp/runs/capsnet-epoch1 --no-progress 2>&1 | tee -a "$OUT/train.log"
cp /tmp/runs/capsnet-epoch1/history.csv "$OUT/capsnet-epoch1-history.csv" 2>/dev/null
cp /tmp/runs/capsnet-epoch1/metrics.json "$OUT/capsnet-epoch1-metrics.json" 2>/dev/null

for exp in robustness affnist multimnist; do
    if [ "$(left)" -lt 60 ]; then log "budget spent before $exp"; break; fi
    log "3. $exp --size paper ($(left) s left)"
    timeout "$(left)" $CAPS run "experiments/$exp.toml" --size paper --device cuda --data-root /tmp/data \
        --runs-dir "/tmp/runs/$exp-paper" --out "/tmp/reports/$exp" --no-progress 2>&1 | tail -n 40 >> "$OUT/experiments.log"
    for run in /tmp/runs/$exp-paper/*/; do
        [ -f "$run/history.csv" ] && cp "$run/history.csv" "$OUT/$exp-$(basename "$run")-history.csv" 2>/dev/null
    done
done
log "done"
