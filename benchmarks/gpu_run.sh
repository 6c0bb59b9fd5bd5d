#!/usr/bin/env bash
# The GPU numbers of docs/performance_gpu.md, on a machine with JAX and
# PyTorch and no TensorFlow (Keras and its small dependencies installed or on
# PYTHONPATH):
#   1. `bench.py --extended` rows of JAX (MLP and ResNet-20),
#   2. a short CIFAR-10 ResNet-20 training run of examples/cifar10/train.py
#      per normalization, on generated images written in the real archive
#      format (the machine has no internet; the images are learnable:
#      tests/support/cifar10_helpers.py),
#   3. the PyTorch bench rows,
# each step started only while GPU_BUDGET_S seconds have not passed (a lease
# is short). The summaries go to $OUT (default outputs/gpu), the data
# and the runs' own files to $GPU_WORK. Sizes for a quick
# dry run on a CPU: GPU_TRAIN_IMAGES, GPU_EPOCHS, GPU_BENCH_STEPS,
# GPU_BENCH_MODELS, GPU_PRESETS.
set -uo pipefail
OUT=${OUT:-outputs/gpu}
TRAIN_IMAGES=${GPU_TRAIN_IMAGES:-10000}
EPOCHS=${GPU_EPOCHS:-3}
BENCH_STEPS=${GPU_BENCH_STEPS:-50}
BENCH_MODELS=${GPU_BENCH_MODELS:-"mlp resnet20"}
PRESETS=${GPU_PRESETS:-"keras l2 l1 linf topk bwn-mean"}
BUDGET=${GPU_BUDGET_S:-480}
PY=${PY:-python3}
export PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false TF_CPP_MIN_LOG_LEVEL=2
WORK=${GPU_WORK:-/tmp/tfnorms-gpu}  # the data and the runs' files: not all worth keeping
mkdir -p "$OUT" "$WORK/cifar"
DATA="$WORK/cifar"

$PY - "$DATA" "$TRAIN_IMAGES" <<'EOF'
import os, sys
sys.path[:0] = ["tests/support", "examples"]
from cifar10_helpers import make_archive
from cifar10.data import ARCHIVE_NAME
n = int(sys.argv[2])
make_archive(os.path.join(sys.argv[1], ARCHIVE_NAME), n_train=n, n_test=n // 5)
print(f"generated {n} training and {n // 5} test images", flush=True)
EOF

in_budget() {
    if (( SECONDS > BUDGET )); then echo "== skipped $1: ${SECONDS}s of ${BUDGET}s spent"; return 1; fi
}

bench() {
    in_budget "bench $1" || return
    echo "== bench $1"
    timeout 200 $PY benchmarks/bench.py --extended --backends "$1" --models $BENCH_MODELS \
        --steps "$BENCH_STEPS" --notes none --output "$OUT/bench_$1.md" > "$OUT/bench_$1.log" 2>&1
    echo "exit $?"
}

# (label, train.py flags): the papers' pairings on ResNet-20.
run_cifar() {
    local label=$1; shift
    in_budget "ResNet-20 $label" || return
    echo "== ResNet-20 $label"
    KERAS_BACKEND=jax timeout 100 $PY examples/cifar10/train.py --preset resnet20 \
        --data-dir "$DATA" --out "$WORK/run-$label" --epochs "$EPOCHS" --verbose 2 "$@" \
        > "$WORK/run-$label.log" 2>&1
    echo "exit $?"
    { echo "== $label"; tail -n 30 "$WORK/run-$label.log"; } >> "$OUT/cifar_runs.log"
    $PY - "$WORK/run-$label" "$label" >> "$OUT/cifar_summary.md" <<'EOF'
import csv, json, os, sys
out, label = sys.argv[1:]
try:
    results = json.load(open(os.path.join(out, "results.json")))
except OSError:
    print(f"| {label} | failed (see cifar_runs.log) | | | |")
    sys.exit()
rows = list(csv.DictReader(open(os.path.join(out, "log.csv"))))
loss = [f"{float(r['loss']):.3f}" for r in rows]
print(f"| {label} | {' → '.join(loss)} | {results['final_test_error']:.3f} | "
      f"{results['images_per_second']:.0f} | {results['distribution']['kind']} |")
EOF
}
bench jax
echo "| normalization | training loss per epoch | final test error | images/s | distribution |" > "$OUT/cifar_summary.md"
echo "|---|---|---|---|---|" >> "$OUT/cifar_summary.md"
for preset in $PRESETS; do
    case $preset in
        keras|l2|l1|linf|topk) run_cifar "$preset" --weight-norm none --batch-norm "$preset" ;;
        cwn-l2) run_cifar "$preset" --weight-norm cwn --batch-norm l2 ;;
        bwn-mean) run_cifar "$preset" --weight-norm bwn --batch-norm mean --init torch ;;
    esac
done
cat "$OUT/cifar_summary.md"
bench torch

nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv 2>/dev/null || true
