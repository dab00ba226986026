#!/usr/bin/env bash
# Session 6 GPU run: SPIR-V (burn `vulkan` feature) against WGSL on the same H100, PyTorch in the same run.
S=$OUT/s; mkdir -p $S
exec > >(tee $OUT/log.txt) 2>&1
for f in .gl/*.deb; do dpkg -x $f /; done; ldconfig
export VK_DRIVER_FILES=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json WGPU_BACKEND=vulkan XDG_RUNTIME_DIR=/tmp PYTHONUNBUFFERED=1
for b in wgsl spirv; do python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.gpu/cw-$b.xz'), open('/tmp/cw-$b','wb'))"; chmod +x /tmp/cw-$b; done
mkdir -p /tmp/data; python3 -c "import lzma,shutil; shutil.copyfileobj(lzma.open('.gpu/db1.xz'), open('/tmp/data/data_batch_1.bin','wb'))"
for i in 2 3 4 5; do ln -sf data_batch_1.bin /tmp/data/data_batch_$i.bin; done
python3 -c "import lzma; d=lzma.open('.gpu/test2000.xz').read(); open('/tmp/data/test_batch.bin','wb').write(d*5)"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
T0=$SECONDS; t() { echo "== $1: $((SECONDS-T0)) s"; T0=$SECONDS; }
timeout 90 /tmp/cw-spirv check-device --backend wgpu 2>&1 | tee $S/check-device-spirv.txt; ok=${PIPESTATUS[0]}; t "check-device spirv rc=$ok"
timeout 150 /tmp/cw-spirv bench --backend wgpu --width 1.0,0.25 --batch-size 512 --warmup 3 --steps 10 --json $S/bench-spirv.json 2>&1 | tee $S/bench-spirv.txt; t "bench spirv"
timeout 200 /tmp/cw-wgsl bench --backend wgpu --width 1.0,0.25 --batch-size 512 --warmup 3 --steps 10 \
  --pytorch --python python3 --pytorch-script tools/pytorch_reference.py --pytorch-device cuda --pytorch-mode fp32,tf32,amp_channels_last \
  --json $S/bench-wgsl.json 2>&1 | grep -v "UserWarning\|sched.step" | tee $S/bench-wgsl.txt; t "bench wgsl + pytorch"
b=spirv; [ "$ok" = 0 ] || b=wgsl
timeout 150 /tmp/cw-$b train --backend wgpu --data-dir /tmp/data --no-download --no-verify --train-limit 10000 --test-limit 2000 \
  --width 1 --epochs 2 --batch-size 512 --seed 7 --runs-dir /tmp/runs --name $b 2>&1 | tr '\r' '\n' | grep -v '^\s*$' | tail -n 12; t "train $b"
cp /tmp/runs/$b/metrics.jsonl $S/$b-metrics.jsonl; cp /tmp/runs/$b/config.json $S/$b-config.json
# Inference cross-check, independent of bench: eval on 2,000 and 10,000 test images; the difference is pure inference.
for e in spirv wgsl; do for n in 2000 10000; do
  s=$(date +%s.%N); timeout 60 /tmp/cw-$e eval --weights /tmp/runs/$b/model.safetensors --backend wgpu --data-dir /tmp/data --no-download --no-verify --test-limit $n 2>&1 | grep -i "accuracy" | head -1
  echo "eval $e n=$n: $(python3 -c "import time; print(round(time.time()-$s,2))") s"
done; done 2>&1 | tee $S/eval-timing.txt; t eval
tar -C $S -cf $OUT/s.tar . ; ls -la $S
