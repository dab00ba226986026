#!/usr/bin/env bash
# Session 13, first GPU call (carry: .gpu with cw.xz = the release binary, probe.xz =
# examples/gpu_probe, both stripped and xz'd; .gl with the Vulkan loader .debs).
# The probe then still built its im2col GEMM locally (now crates/core/src/model/gpu_conv.rs).
exec > >(tee $OUT/log.txt) 2>&1
root=$(pwd)
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json WGPU_BACKEND=vulkan XDG_RUNTIME_DIR=/tmp PYTHONUNBUFFERED=1
for b in cw probe; do python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.gpu/$b.xz'), open('/tmp/$b','wb'))"; chmod +x /tmp/$b; done
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader; nproc
T0=$SECONDS; t() { echo "== $1: $((SECONDS-T0)) s"; T0=$SECONDS; }
mkdir -p /tmp/p && cd /tmp/p
timeout 170 /tmp/probe wgpu 1 512 2>&1 | tee $OUT/probe.txt; t "probe"
printf '[profiling]\nlogger = { level = "basic", file = "/tmp/p/profile.log", append = false }\n' > cubecl.toml
timeout 120 /tmp/probe wgpu 1 512 > $OUT/probe-profiled.txt 2>&1; t "probe profiled"
rm cubecl.toml; ls -la /tmp/p; xz -T8 -c /tmp/p/profile.log > $OUT/profile.log.xz
cd "$root"
timeout 200 /tmp/cw bench --backend wgpu --width 1.0,0.25 --batch-size 512 --warmup 3 --steps 10 \
  --pytorch --python python3 --pytorch-script tools/pytorch_reference.py --pytorch-device cuda --pytorch-mode fp32,tf32,amp_channels_last \
  --json $OUT/bench.json 2>&1 | grep -v "UserWarning\|sched.step" | tee $OUT/bench.txt; t "bench"
