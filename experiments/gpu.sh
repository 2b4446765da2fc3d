#!/usr/bin/env bash
# The device check: run once, as one command, when a GPU machine is lent. Breadth first: every CUDA path at tiny size
# (at most 5 min 50 s), then one paper CapsNet epoch on full MNIST with what is left of the 6 minutes.
#
#   here:   make gpu-pack            # -> .gpu/ (wheels for Python 3.12 + MNIST .gz; git-ignored)
#   there:  bash experiments/gpu.sh  # with .gpu carried; everything is packed into $OUT/gpu-results.tar.gz
#
# The lent machine has torch, timm, typer, seaborn, pandas, pyarrow and safetensors; the wheels of whatever else
# capsprobe imports (kornia, kornia-rs, mlxtend, ART and their dependencies) come in .gpu/wheels and are installed
# only where the module is missing. Every step runs under `timeout` with its own budget (seconds, in brackets), so
# one step that hangs or crashes costs its budget and no more; steps.tsv records each step's exit status and time.
#
#   0. the environment: GPU, driver, torch, CUDA, cuDNN, bf16 support                                      [ 20]
#   1. bench on CUDA: fast and eager kernels, channels_last, torch.compile                                  [ 75]
#   2. capsprobe demo --size tiny (train, probe, report)                                                    [ 45]
#   3. experiments/attacks.toml --size tiny (ART's FGSM/PGD on CUDA, worst cases, masking checks)            [ 45]
#   4. perturb --lie on the demo's CapsNet (jvp on CUDA)                                                    [ 30]
#   5. torchrun, one process, recon_weight 0 (DDP with parameters no loss reaches)                          [ 30]
#   6. capsprobe run --jobs 2 (worker processes sharing the GPU)                                            [ 45]
#   7. kill -9 after the first checkpoint, --resume, and the weight difference to an uninterrupted run     [ 60]
#   8. the paper CapsNet, one epoch of full MNIST, with the time that is left                               [rest]
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
BUDGET=${GPU_BUDGET_S:-360}
WORK=${GPU_WORK:-/tmp/capsprobe-gpu}
RES="$WORK/results"
rm -rf "$WORK" && mkdir -p "$RES" "$OUT"
START=$SECONDS
left() { echo $((BUDGET - (SECONDS - START))); }
log() { echo "[gpu.sh $(date -u +%H:%M:%S) +$((SECONDS - START))s] $*" | tee -a "$RES/gpu.log"; }
pack() { tar -czf "$OUT/gpu-results.tar.gz" -C "$WORK" results 2>/dev/null; cp "$RES/gpu.log" "$RES/steps.tsv" "$OUT/" 2>/dev/null; }
trap pack EXIT
trap 'exit 143' TERM INT  # killed from outside: the EXIT trap still packs what there is
export PYTHONUNBUFFERED=1
printf "step\tbudget_s\texit\tseconds\n" > "$RES/steps.tsv"

# step NAME BUDGET COMMAND...: run under timeout (capped by what is left), log its output, record exit and time
step() {
    local name=$1 budget=$2; shift 2
    local cap; cap=$(left)
    [ "$budget" -gt "$cap" ] && budget=$cap
    if [ "$budget" -lt 5 ]; then log "$name: skipped, budget spent"; printf "%s\t0\tskipped\t0\n" "$name" >> "$RES/steps.tsv"; return 1; fi
    log "$name (budget ${budget}s)"
    local t0=$SECONDS
    timeout -k 5 "$budget" "$@" > "$RES/$name.log" 2>&1
    local rc=$?
    printf "%s\t%s\t%s\t%s\n" "$name" "$budget" "$rc" $((SECONDS - t0)) >> "$RES/steps.tsv"
    tail -n 3 "$RES/$name.log" | sed 's/^/    /' | tee -a "$RES/gpu.log"
    log "$name: exit $rc in $((SECONDS - t0))s"
    return $rc
}

# --- 0. the environment -------------------------------------------------------------------------------------------
SITE=$WORK/site
mkdir -p "$SITE"
for whl in .gpu/wheels/*.whl; do
    [ -e "$whl" ] || { log "no wheels in .gpu/wheels: run make gpu-pack here first"; break; }
    dist=$(basename "$whl" | cut -d- -f1)
    mod=$(case "$dist" in kornia_rs) echo kornia_rs;; adversarial_robustness_toolbox) echo art;;
          scikit_learn) echo sklearn;; *) echo "$dist";; esac)
    python3 -c "import $mod" 2>/dev/null && continue
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" "$whl" \
        >> "$RES/install.log" 2>&1 || log "wheel install failed: $whl"
done
export PYTHONPATH="$SITE:$PWD" ART_DATA_PATH="$WORK/art"
DATA=$WORK/data
mkdir -p "$DATA/MNIST/raw"
for f in .gpu/MNIST/raw/*.gz; do [ -e "$f" ] && gunzip -c "$f" > "$DATA/MNIST/raw/$(basename "$f" .gz)"; done
CAPS="python3 -m capsprobe"
DEVICE=${GPU_DEVICE:-cuda}  # GPU_DEVICE=cpu: try the script's commands on a CPU machine
RUNS=$WORK/runs
REPORTS=$WORK/reports
step 0-environment 20 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv; python3 -c "
import sys, torch
print(\"python\", sys.version.split()[0], \"torch\", torch.__version__, \"cuda\", torch.version.cuda,
      \"cudnn\", torch.backends.cudnn.version(), \"gpus\", torch.cuda.device_count())
print(\"device\", torch.cuda.get_device_name(0), \"capability\", torch.cuda.get_device_capability(0),
      \"bf16 native\", torch.cuda.is_bf16_supported(including_emulation=False))
import timm, kornia, art, capsprobe
print(\"timm\", timm.__version__, \"kornia\", kornia.__version__, \"art\", art.__version__, \"capsprobe\", capsprobe.__version__)
"'

# --- 1. bench: fast and eager kernels, channels_last, compile ------------------------------------------------------
step 1a-bench 25 $CAPS bench --device $DEVICE --steps 4 --model capsnet_small --model capsnet --model resnet18 --model capsnet_em_small
step 1b-bench-eager 10 $CAPS bench --device $DEVICE --steps 4 --kernels eager --model capsnet_small --model capsnet
step 1c-bench-channels-last 10 $CAPS bench --device $DEVICE --steps 4 --channels-last --model capsnet --model resnet18
step 1d-bench-compile 30 $CAPS bench --device $DEVICE --steps 4 --compile --model capsnet_small

# --- 2-4. the probe paths on CUDA ----------------------------------------------------------------------------------
step 2-demo-tiny 45 $CAPS demo --size tiny --device $DEVICE --runs-dir "$RUNS/demo" --out "$REPORTS/demo" --no-progress
step 3-attacks-tiny 45 $CAPS run experiments/attacks.toml --size tiny --device $DEVICE --runs-dir "$RUNS/attacks" \
    --out "$REPORTS/attacks" --no-progress
CAPSRUN=$(ls -d "$RUNS"/demo/capsnet_small* 2>/dev/null | head -n 1)
step 4-perturb-lie 30 $CAPS perturb "${CAPSRUN:-$RUNS/demo/missing}" -t rotate -m rotate=0,45 --lie --limit 64 \
    --device $DEVICE --out "$REPORTS/lie" --no-progress

# --- 5-7. training paths: DDP, --jobs, kill and resume -------------------------------------------------------------
TINY=(--model capsnet_small -o conv_channels=16 -o primary_types=4 --dataset mnist-sample --limit 512 --device $DEVICE --no-progress)
step 5-torchrun-recon0 30 python3 -m torch.distributed.run --standalone --nproc_per_node=1 -m capsprobe train "${TINY[@]}" \
    --epochs 1 --recon-weight 0 --out "$RUNS/ddp-recon0"
step 6-run-jobs-2 45 $CAPS run experiments/demo.toml --size tiny --device $DEVICE --jobs 2 --runs-dir "$RUNS/jobs" \
    --out "$REPORTS/jobs" --no-progress
cat > "$WORK/resume.sh" <<'SH'
# train 3 epochs uninterrupted; train the same run, kill -9 it once its first checkpoint exists, --resume it; compare
set -u
TINY=(--model capsnet_small -o conv_channels=16 -o primary_types=4 --dataset mnist-sample --limit 512 --device $DEVICE --no-progress)
$CAPS train "${TINY[@]}" --epochs 3 --out "$RUNS/whole" || exit 1
$CAPS train "${TINY[@]}" --epochs 3 --out "$RUNS/killed" & pid=$!
while kill -0 $pid 2>/dev/null && [ ! -f "$RUNS/killed/checkpoint/state.safetensors" ]; do sleep 0.2; done
kill -9 $pid 2>/dev/null; wait $pid 2>/dev/null
[ -f "$RUNS/killed/complete.json" ] && echo "warning: the run finished before the kill" || echo "killed after the first checkpoint"
$CAPS train "${TINY[@]}" --epochs 3 --out "$RUNS/killed" --resume || exit 1
python3 - "$RUNS/whole/model.safetensors" "$RUNS/killed/model.safetensors" <<'PY'
import sys
from safetensors.torch import load_file
a, b = load_file(sys.argv[1]), load_file(sys.argv[2])
worst = max(float((a[k].float() - b[k].float()).abs().max()) for k in a)
print(f"max |weight difference|, resumed against uninterrupted: {worst:.3g} over {len(a)} tensors"
      " (0 with deterministic kernels; cuDNN's nondeterministic ones leave rounding-level differences)")
PY
SH
export CAPS RUNS DEVICE
step 7-kill-resume 60 bash "$WORK/resume.sh"

# --- 8. one paper CapsNet epoch on full MNIST with the time that is left --------------------------------------------
step 8-paper-capsnet-epoch $(( $(left) - 10 )) $CAPS train --model capsnet --dataset mnist --data-root "$DATA" --no-download \
    --device $DEVICE --epochs 1 --out "$RUNS/capsnet-epoch1" --no-progress

# --- pack: logs, steps, run records and reports (no weights) -------------------------------------------------------
for run in "$RUNS"/*/ "$RUNS"/*/*/; do
    [ -f "$run/metrics.json" ] || continue
    dest="$RES/runs/${run#"$RUNS"/}"
    mkdir -p "$dest" && cp "$run"/{config.json,metrics.json,history.csv} "$dest" 2>/dev/null
done
mkdir -p "$RES/reports"
[ -d "$REPORTS" ] && (cd "$REPORTS" && find . \( -name "*.csv" -o -name "*.md" -o -name "manifest.json" \) -size -2M \
    -exec cp --parents {} "$RES/reports" \;) 2>/dev/null
log "done in $((SECONDS - START))s"
