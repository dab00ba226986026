#!/usr/bin/env bash
# Session 13, second GPU call: the GEMM convolution (--gpu-conv gemm) against Burn's on the same card.
# Carry: .gpu with cw.xz, db1.xz (data_batch_1.bin) and test2000.xz (the first 2,000 test records); .gl.
exec > >(tee $OUT/log.txt) 2>&1
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json WGPU_BACKEND=vulkan XDG_RUNTIME_DIR=/tmp PYTHONUNBUFFERED=1
python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.gpu/cw.xz'), open('/tmp/cw','wb'))"; chmod +x /tmp/cw
mkdir -p /tmp/data; python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.gpu/db1.xz'), open('/tmp/data/data_batch_1.bin','wb'))"
for i in 2 3 4 5; do ln -sf data_batch_1.bin /tmp/data/data_batch_$i.bin; done
python3 -c "import lzma; d=lzma.open('.gpu/test2000.xz').read(); open('/tmp/data/test_batch.bin','wb').write(d*5)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
T0=$SECONDS; t() { echo "== $1: $((SECONDS-T0)) s"; T0=$SECONDS; }
timeout 45 /tmp/cw check-device --backend wgpu 2>&1 | tee $OUT/check-device.txt; t "check-device"
timeout 240 /tmp/cw bench --backend wgpu --gpu-conv gemm,burn --width 1.0,0.25 --batch-size 512 --warmup 3 --steps 10 \
  --pytorch --python python3 --pytorch-script tools/pytorch_reference.py --pytorch-device cuda --pytorch-mode fp32,tf32,amp_channels_last \
  --json $OUT/bench.json 2>&1 | grep -v "UserWarning\|sched.step" | tee $OUT/bench.txt; t "bench"
timeout 130 /tmp/cw train --backend wgpu --data-dir /tmp/data --no-download --no-verify --train-limit 10000 --test-limit 2000 \
  --width 1 --epochs 2 --batch-size 512 --seed 7 --runs-dir /tmp/runs --name gemm 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 8; t "train gemm"
cp /tmp/runs/gemm/metrics.jsonl $OUT/check-wgpu-gemm-metrics.jsonl; cp /tmp/runs/gemm/config.json $OUT/check-wgpu-gemm-config.json
