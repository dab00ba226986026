#!/usr/bin/env bash
# Session 13, third GPU call: the GEMM path only from 64 input channels (GEMM_MIN_CHANNELS) against Burn's.
exec > >(tee $OUT/log.txt) 2>&1
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json WGPU_BACKEND=vulkan XDG_RUNTIME_DIR=/tmp
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.gpu/cw.xz'), open('/tmp/cw','wb'))"; chmod +x /tmp/cw
timeout 130 /tmp/cw bench --backend wgpu --gpu-conv gemm,burn --width 0.25,1.0 --batch-size 512 --warmup 3 --steps 10 --json $OUT/bench.json 2>&1 | tee $OUT/bench.txt
