#!/usr/bin/env bash
# The GPU machine's side of tools/gpu_pack.sh, run in the repository's copy there:
#   tools/gpu_device.sh stage                 unpack the carried parts into /tmp/gpu
#   tools/gpu_device.sh check [BACKENDS]      stage, then tools/gpu_check.sh
#   tools/gpu_device.sh full BACKEND [ARGS]   stage, then the full recipe (24 epochs, width 1,
#                                             all 50,000 images) on BACKEND; resumes the run
#                                             when an earlier call left it unfinished.
#                                             BACKEND:CONV adds --gpu-conv CONV (cuda:burn);
#                                             `best` takes the fastest of check's bench rows at
#                                             the recipe's shape whose backend passed its checks
# Every call first unpacks .gl (the Vulkan loaders) and whatever .gpu/<part> it carries,
# checks each file against the MANIFEST (size and MD5), and says which parts are still
# missing. Outputs go to $OUT (the device tool's folder that comes back). FULL_SECONDS
# (default 540) bounds the training so that a call ends inside its 10 minutes; the run's
# checkpoint then lets the next `full` call go on.
set -euo pipefail
cd "$(dirname "$0")/.."
step=${1:-stage}
shift || true
# GPU_PARTS and GPU_DIR: where the parts come and where they are unpacked (the tests' own).
parts=${GPU_PARTS:-.gpu}
gpu=${GPU_DIR:-/tmp/gpu}
out=${OUT:-$gpu/out}
mkdir -p "$gpu/data" "$out"
export PYTHONUNBUFFERED=1 XDG_RUNTIME_DIR=/tmp WGPU_BACKEND=vulkan

if ls .gl/*.deb >/dev/null 2>&1 && ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd

# Copy the carried part, then unpack every file whose bytes have all come (checked against
# the MANIFEST's size and MD5); say what is still missing.
mkdir -p "$gpu/parts"
for p in "$parts"/*/; do
  [ -f "$p/part" ] || continue
  cp "$p/MANIFEST" "$gpu/MANIFEST"
  [ -f "$p/flex-metrics.jsonl" ] && cp "$p/flex-metrics.jsonl" "$gpu/"
  cp "$p/part" "$gpu/parts/$(basename "$p")"
done
[ -f "$gpu/MANIFEST" ] || { echo "gpu_device: no $parts/<part> carried and none staged before" >&2; exit 2; }
missing=$(python3 - "$gpu" <<'PY'
import hashlib, lzma, os, sys
gpu = sys.argv[1]
rows = [line.split() for line in open(f"{gpu}/MANIFEST")]
part = int(next(r[1] for r in rows if r[0] == "part_bytes"))
for name, start, length, size, md5 in (r for r in rows if r[0] != "part_bytes"):
    start, length, size = int(start), int(length), int(size)
    dest = f"{gpu}/cifar-webgpu" if name == "cifar-webgpu" else f"{gpu}/data/{name}"
    if os.path.exists(dest) and os.path.getsize(dest) == size:
        continue
    letters = [chr(97 + i) for i in range(start // part, (start + length - 1) // part + 1)]
    absent = [l for l in letters if not os.path.exists(f"{gpu}/parts/{l}")]
    if absent:
        print(f"{name} (parts {' '.join(absent)})")
        continue
    xz = bytearray()
    for l in letters:
        with open(f"{gpu}/parts/{l}", "rb") as f:
            f.seek(max(start - (ord(l) - 97) * part, 0))
            xz += f.read(start + length - (ord(l) - 97) * part - f.tell())
    try:
        raw = lzma.decompress(bytes(xz))
    except (lzma.LZMAError, EOFError) as e:
        sys.exit(f"gpu_device: {name}: its xz data is damaged ({e})")
    if len(raw) != size or hashlib.md5(raw).hexdigest() != md5:
        sys.exit(f"gpu_device: {name}: size or MD5 differs from the MANIFEST")
    with open(dest + ".tmp", "wb") as f:
        f.write(raw)
    os.chmod(dest + ".tmp", 0o755 if name == "cifar-webgpu" else 0o644)
    os.replace(dest + ".tmp", dest)
PY
)
echo "gpu_device: staged in $gpu: $(ls "$gpu/data" | tr '\n' ' ')$([ -x "$gpu/cifar-webgpu" ] && echo "and the binary")"
[ -z "$missing" ] || echo "gpu_device: still missing: $(echo "$missing" | tr '\n' ';')"
need() { # the files a step reads, all staged: check's runs read the first 10,000 training images
  local absent=""
  for f in "$@"; do
    if echo "$missing" | grep -q "^$f "; then absent="$absent $f"; fi
  done
  [ -z "$absent" ] || { echo "gpu_device: $step needs$absent; carry the parts named above first" >&2; exit 2; }
}
all=(cifar-webgpu test_batch.bin data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin)

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo "no nvidia-smi"
} > "$out/machine.txt"

case $step in
  stage) ;;
  check)
    need cifar-webgpu test_batch.bin data_batch_1.bin
    # The flex reference run, when gpu_pack.sh carried one made beforehand (FLEX_METRICS).
    flex=()
    [ -f "$gpu/flex-metrics.jsonl" ] && flex=("$gpu/flex-metrics.jsonl")
    set +e
    BACKENDS=${1:-${BACKENDS:-}} tools/gpu_check.sh "$gpu/cifar-webgpu" "$gpu/data" "$out/check" "${flex[@]}" 2>&1 |
      tee "$out/check.log"
    status=${PIPESTATUS[0]}
    set -e
    # Kept beside the staged files for `full best` (a later call's $OUT starts empty).
    for f in bench.json verdict.txt; do
      [ -f "$out/check/$f" ] && cp "$out/check/$f" "$gpu/check-$f"
    done
    exit "$status"
    ;;
  full)
    spec=${1:?"gpu_device: full BACKEND[:CONV] or full best"}
    shift
    need "${all[@]}"
    if [ "$spec" = best ]; then
      # The fastest training row at width 1, batch 512 (the recipe's shape) of this machine's
      # `check`, among the backends whose checks passed (a FAIL line in its verdict).
      spec=$(python3 - "$gpu/check-bench.json" "$gpu/check-verdict.txt" <<'PY'
import json, os, sys
bench, verdict = sys.argv[1:]
if not os.path.exists(bench):
    sys.exit(f"gpu_device: full best needs {bench}: run `check` on this machine first, or name the backend")
failed = set()
if os.path.exists(verdict):
    failed = {line.split()[0].rstrip(":") for line in open(verdict) if line.rstrip().endswith("FAIL")}
try:
    rows = [r for r in json.load(open(bench))["rows"] if r["width"] == 1.0 and r["batch_size"] == 512]
    rows = [(r["backend"], float(r["train_images_per_sec"])) for r in rows]
except (ValueError, KeyError, TypeError) as e:
    sys.exit(f"gpu_device: {bench}: not a bench report ({type(e).__name__}: {e})")
rows = [r for r in rows if r[0].split("-")[0] not in failed]
if not rows:
    sys.exit(f"gpu_device: full best: no row at width 1, batch 512 of a backend that passed its checks in {bench}")
best = max(rows, key=lambda r: r[1])
backend, _, conv = best[0].partition("-")
# flex's label carries its precision (flex-bf16), which `auto` picks again.
spec = backend if backend == "flex" or not conv else f"{backend}:{conv}"
others = ", ".join(f"{r[0]} {r[1]:.1f}" for r in rows if r is not best)
print(f"gpu_device: best: {spec} ({best[1]:.1f} train img/s; {others or 'no other row'}"
      f"{'; failed its checks: ' + ', '.join(sorted(failed)) if failed else ''})", file=sys.stderr)
print(spec)
PY
)
    fi
    backend=${spec%%:*}
    device=(--backend "$backend")
    name=full-$backend
    if [ "$spec" != "$backend" ]; then
      device+=(--gpu-conv "${spec#*:}")
      name=$name-${spec#*:}
    fi
    # A checkpoint from an earlier call: go on with its recipe (ARGS would be refused).
    run=(--runs-dir "$gpu/runs" --name "$name" "$@")
    [ -f "$gpu/runs/$name/checkpoint.safetensors" ] && run=(--resume "$gpu/runs/$name")
    SECONDS=0
    set +e
    # SIGINT saves a checkpoint mid-epoch, as Ctrl-C does.
    timeout --signal=INT "${FULL_SECONDS:-540}" "$gpu/cifar-webgpu" train "${device[@]}" \
      --data-dir "$gpu/data" --no-download "${run[@]}" 2>&1 | tee -a "$out/$name.log"
    status=${PIPESTATUS[0]}
    set -e
    echo "gpu_device: $name: exit $status after $SECONDS s" | tee -a "$out/$name.log"
    for f in config.json metrics.jsonl curves.png misclassified.png; do
      [ -f "$gpu/runs/$name/$f" ] && cp "$gpu/runs/$name/$f" "$out/$name-$f"
    done
    exit "$status"
    ;;
  *) echo "gpu_device: unknown step $step (stage, check, full)" >&2; exit 2 ;;
esac
