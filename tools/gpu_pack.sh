#!/usr/bin/env bash
# Packs what a lent GPU machine needs into folders git ignores, so that a GPU session spends
# its minutes on the GPU. The `device` tool carries 64 MiB per call, the tracked files
# included, and the machine reaches no network:
#   tools/gpu_pack.sh BINARY DATA_DIR [PACK_DIR]        (PACK_DIR default .gpu)
#   - PACK_DIR/a, b, c, …: one stream of the stripped BINARY and the six CIFAR-10 .bin files,
#     each xz'd, cut into parts that fit one call beside the tree; a MANIFEST in every part
#     says where each file lies;
#   - .gl: the Vulkan loader packages the GPU machine lacks (for wgpu);
#   - both added to .git/info/exclude.
# Then one device call per part, in order, each carrying `.gl` and its part; a call runs a
# step (tools/gpu_device.sh) once the files it reads have come: `check` the binary,
# test_batch.bin and data_batch_1.bin (packed first), `full` all six. With 4 parts:
#   run(carry=[".gl", ".gpu/a"], command="tools/gpu_device.sh stage")
#   run(carry=[".gl", ".gpu/b"], command="BENCH_WIDTHS=1.0 BENCH_BATCHES=512 GPU_CONVS=gemm,gemm-f16,cuda:burn tools/gpu_device.sh check")
#   run(carry=[".gl", ".gpu/c"], command="tools/gpu_device.sh stage")
#   run(carry=[".gl", ".gpu/d"], command="tools/gpu_device.sh full best")
# (each `stage` says which files are still missing and in which parts).
# A file is unpacked there once the parts holding it have come; they live in /tmp/gpu and
# survive between calls while the machine stays warm (30 s after a call ends).
# PART_BYTES overrides the part size, NO_GL=1 leaves .gl out; FLEX_METRICS (a metrics.jsonl
# of gpu_check.sh's flex run, `train --backend flex --width 1 --epochs 2 --train-limit 10000
# --test-limit 2000 --batch-size 512 --seed 7`) goes with every part, so that `check` need
# not train on flex.
set -euo pipefail
[ $# -ge 2 ] || { sed -n 2,24p "$0" >&2; exit 2; }
bin=$1 data=$2 pack=${3:-.gpu}
bin=$(realpath "$bin") data=$(realpath "$data")
cd "$(dirname "$0")/.."
[ -x "$bin" ] || { echo "gpu_pack: $bin is not an executable" >&2; exit 2; }
files=(test_batch.bin data_batch_1.bin data_batch_2.bin data_batch_3.bin data_batch_4.bin data_batch_5.bin)
for f in "${files[@]}"; do
  [ -f "$data/$f" ] || { echo "gpu_pack: $data/$f is missing" >&2; exit 2; }
done
ignore() { grep -qxF "$1" .git/info/exclude 2>/dev/null || echo "$1" >> .git/info/exclude; }
case $pack in /*) ;; *) ignore "/${pack#./}/" ;; esac

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
strip -o "$work/cifar-webgpu" "$bin"
# One file per core: xz -9 compresses a file this size in one thread. (XZ_LEVEL: the tests'
# faster packing.)
level=${XZ_LEVEL:-9}
xz "-$level" -c "$work/cifar-webgpu" > "$work/cifar-webgpu.xz" &
jobs=($!)
for f in "${files[@]}"; do xz "-$level" -c "$data/$f" > "$work/$f.xz" & jobs+=($!); done
# Each job's own status: a bare `wait` returns 0 whatever they did.
for job in "${jobs[@]}"; do wait "$job"; done

gl=0
if [ -z "${NO_GL:-}" ]; then # NO_GL: a machine that has the loaders, or a test without network
  if ! ls .gl/*.deb >/dev/null 2>&1; then
    # The device README's recipe: the loaders for amd64, whatever this machine is.
    mkdir -p .gl "$work/lists/partial"
    o=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 "-oDir::State::Lists=$work/lists")
    apt-get "${o[@]}" update -qq
    (cd .gl && apt-get "${o[@]}" download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
  fi
  ignore /.gl/
  gl=$(cat .gl/*.deb | wc -c)
fi

# What travels with every call besides a part: the tracked files, the untracked ones git
# does not ignore, and .gl. A part fills the rest of the 64 MiB, less 1 MiB for what changes
# before the GPU session (a results file, a note).
travels=$( { git ls-files -z; git ls-files -z --others --exclude-standard; } | xargs -0 stat -c %s | awk '{ s += $1 } END { print s + 0 }')
part=${PART_BYTES:-$((64 * 1024 * 1024 - travels - gl - 1024 * 1024))}
[ -n "${PART_BYTES:-}" ] || [ "$part" -gt $((8 * 1024 * 1024)) ] ||
  { echo "gpu_pack: only $part bytes per call are left beside the tree" >&2; exit 1; }

# MANIFEST: name, offset and length in the stream, the unpacked file's size and MD5.
offset=0
for f in cifar-webgpu "${files[@]}"; do
  src=$work/$f
  [ "$f" = cifar-webgpu ] || src=$data/$f
  length=$(stat -c %s "$work/$f.xz")
  echo "$f $offset $length $(stat -c %s "$src") $(md5sum < "$src" | cut -d' ' -f1)" >> "$work/MANIFEST"
  cat "$work/$f.xz" >> "$work/stream"
  offset=$((offset + length))
done
echo "part_bytes $part" >> "$work/MANIFEST"
rm -rf "$pack" && mkdir -p "$pack"
split -b "$part" -a 1 "$work/stream" "$work/part."
for p in "$work"/part.*; do
  mkdir -p "$pack/${p##*.}"
  mv "$p" "$pack/${p##*.}/part"
  cp "$work/MANIFEST" "$pack/${p##*.}/"
  # gpu_check.sh's flex reference, run here beforehand, saves the GPU machine that run.
  if [ -n "${FLEX_METRICS:-}" ]; then cp "$FLEX_METRICS" "$pack/${p##*.}/flex-metrics.jsonl"; fi
done

letters=abcdefghijklmnopqrstuvwxyz
echo "gpu_pack: $offset bytes in $(ls "$pack" | wc -l) parts of at most $part bytes (the tree: $travels, .gl: $gl)"
while read -r name start length _; do
  [ "$name" = part_bytes ] && continue
  echo "  $name: parts ${letters:$((start / part)):1} to ${letters:$(((start + length - 1) / part)):1}"
done < "$work/MANIFEST"
