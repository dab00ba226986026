#!/usr/bin/env bash
# The GPU proof in one command, for a Linux machine with a GPU, no network and ~10 minutes:
#   1. `check-device` on every GPU backend: its reductions, BatchNorm statistics and GEMM
#      convolution against the host;
#   2. a real-data check on every GPU backend: the same short training as on flex (same
#      seed, same images), whose test accuracies must agree within noise;
#   3. `bench` on every GPU backend the binary has (wgpu; cuda when built with it) that ran
#      1 and 2 to the end, beside PyTorch with the same shapes in the same invocation:
#      ours/PyTorch per row, first-step time and peak device memory, in OUT_DIR/bench.json.
#
# usage: tools/gpu_check.sh BINARY DATA_DIR OUT_DIR [FLEX_METRICS]
#   DATA_DIR      CIFAR-10's test_batch.bin and data_batch_1.bin at least (not MD5-checked:
#                 only the first 10,000 training and 2,000 test images are used)
#   FLEX_METRICS  metrics.jsonl of the same training on flex, run elsewhere beforehand; without
#                 it the flex run happens here
# Environment: GPU_CHECK_TINY=1 runs tiny shapes (for lavapipe: known to work before a GPU sees
# it); PYTHON (default python3) with PyTorch; PYTORCH_DEVICE (default: cuda if PyTorch sees
# one, else cpu); BACKENDS to override the backends benched, BENCH_WIDTHS and BENCH_BATCHES
# the shapes; GPU_CONVS the GPU convolutions benched (default auto: gemm on a GPU; e.g.
# gemm,gemm-f16,burn for each, rows labelled wgpu-gemm, wgpu-gemm-f16, ...; cuda:burn for one
# backend alone, dropped where that backend is not benched); TOLERANCE in
# points (default 5, measured on an H100: wgpu 38.80 % against flex 33.90 %, dropout masks
# and round-off differing; 10 with TINY).
set -euo pipefail
[ $# -ge 3 ] || { sed -n 2,23p "$0" >&2; exit 2; }
bin=$1 data=$2 out=$3 flex_metrics=${4:-}
here=$(cd "$(dirname "$0")" && pwd)
python=${PYTHON:-python3}
tolerance=${TOLERANCE:-5}
mkdir -p "$out"
[ -x "$bin" ] || { echo "gpu_check: $bin is not an executable" >&2; exit 2; }
[ -f "$data/test_batch.bin" ] || { echo "gpu_check: $data has no test_batch.bin" >&2; exit 2; }

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
  "$python" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)' 2>/dev/null || echo "no PyTorch for $python"
} | tee "$out/machine.txt"

if [ -n "${GPU_CHECK_TINY:-}" ]; then
  # 8 steps on 256 test images: a smoke test whose accuracies differ by several points.
  widths=0.125 batches=32 warmup=1 steps=2 width=0.125 train=512 test=256 epochs=1 batch=64 tolerance=${TOLERANCE:-10}
else
  widths=1.0,0.25 batches=512,128 warmup=3 steps=10 width=1.0 train=10000 test=2000 epochs=2 batch=512
fi
# A session short of device time benches fewer shapes (each row's first step compiles and
# autotunes its kernels: 3 to 70 s on an H200).
widths=${BENCH_WIDTHS:-$widths} batches=${BENCH_BATCHES:-$batches}
backends=${BACKENDS:-wgpu}
# cuda only where the binary was built with it (its --backend values list it).
if [ -z "${BACKENDS:-}" ] && "$bin" check-device --help | grep -q '^ *- cuda:'; then backends=wgpu,cuda; fi
pydev=${PYTORCH_DEVICE:-$("$python" -c 'import torch; print("cuda" if torch.cuda.is_available() else "cpu")' 2>/dev/null || echo none)}
if [ "$pydev" = cuda ]; then modes=fp32,tf32,amp_channels_last; else modes=fp32,channels_last; fi

run() { # backend name
  "$bin" train --backend "$1" --data-dir "$data" --no-download --no-verify --train-limit "$train" --test-limit "$test" \
    --width "$width" --epochs "$epochs" --batch-size "$batch" --seed 7 --runs-dir "$out" --name "$2"
}
last_acc() { tail -n 1 "$1" | sed 's/.*"test_acc":\([0-9.eE+-]*\).*/\1/'; }
# Each GPU backend is checked on its own; a failure is reported at the end, after the bench.
# A backend whose check-device or real-data run did not finish is left out of the bench: one
# that cannot start would stop the bench, and with it every other backend's rows.
failed=0 benched=
: > "$out/verdict.txt"
for backend in ${backends//,/ }; do
  echo "== check-device --backend $backend"
  if ! "$bin" check-device --backend "$backend" | tee "$out/check-device-$backend.txt"; then
    echo "$backend: check-device failed or found a wrong result: FAIL" | tee -a "$out/verdict.txt"
    failed=1
    continue
  fi

  echo "== real data on $backend: width $width, $epochs epochs on $train training images, tested on $test"
  SECONDS=0
  if ! run "$backend" "check-$backend"; then
    echo "$backend: the real-data run failed: FAIL" | tee -a "$out/verdict.txt"
    failed=1
    continue
  fi
  echo "real-data run on $backend: ${SECONDS} s" | tee -a "$out/machine.txt"
  benched=${benched:+$benched,}$backend
  if [ -z "$flex_metrics" ]; then
    # BACKENDS=flex (a machine with neither a GPU nor lavapipe) compares flex with itself.
    [ "$backend" = flex ] || run flex check-flex
    flex_metrics=$out/check-flex/metrics.jsonl
  fi
  verdict=$(awk -v g="$(last_acc "$out/check-$backend/metrics.jsonl")" -v f="$(last_acc "$flex_metrics")" -v t="$tolerance" 'BEGIN {
    d = (g - f) * 100; if (d < 0) d = -d
    printf "%s test accuracy %.2f%%, flex %.2f%%: %.2f points apart (tolerance %s): %s", "'"$backend"'", g * 100, f * 100, d, t, (d <= t ? "PASS" : "FAIL") }')
  echo "$verdict" | tee -a "$out/verdict.txt"
  case $verdict in *PASS) ;; *) failed=1 ;; esac
done

if [ -z "$benched" ]; then
  echo "== no bench: no backend passed check-device and finished its real-data run" | tee -a "$out/verdict.txt"
  exit 1
fi
[ "$benched" = "$backends" ] || echo "gpu_check: benching $benched only (of $backends)"
# An entry for one backend (cuda:burn) only where that backend is benched: bench refuses it otherwise.
convs=
IFS=, read -ra entries <<< "${GPU_CONVS:-auto}"
for entry in "${entries[@]}"; do
  case $entry in
    *:*) [[ ",$benched," == *",${entry%%:*},"* ]] || { echo "gpu_check: $entry dropped: ${entry%%:*} is not benched"; continue; } ;;
  esac
  convs=${convs:+$convs,}$entry
done
echo "== bench: $benched (${convs:-auto} convolutions), widths $widths, batches $batches; PyTorch on $pydev ($modes)"
pytorch=()
[ "$pydev" != none ] && pytorch=(--pytorch --python "$python" --pytorch-script "$here/pytorch_reference.py" --pytorch-device "$pydev" --pytorch-mode "$modes")
"$bin" bench --backend "$benched" --gpu-conv "${convs:-auto}" --width "$widths" --batch-size "$batches" \
  --warmup "$warmup" --steps "$steps" "${pytorch[@]}" --json "$out/bench.json" | tee "$out/bench.txt"

exit "$failed"
