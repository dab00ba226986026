#!/usr/bin/env python3
"""Validates every SPIR-V kernel a CubeCL compilation log holds (SPIRV-Tools' spirv-as and
spirv-val, Debian's `spirv-tools`). Make the log by running a `--features vulkan` binary in a
folder holding this folder's cubecl.toml (its `file` path edited):
    WGPU_BACKEND=vulkan cifar-webgpu check-device --backend wgpu
usage: validate.py KERNELS_LOG [OUT_DIR]"""
import os, re, subprocess, sys

log, out = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "spirv-kernels")
os.makedirs(out, exist_ok=True)
entries = open(log).read().split("[START_KERNEL_COMPILATION]")[1:]
invalid = 0
for i, entry in enumerate(entries):
    name = re.search(r"name: (.*)", entry).group(1)
    source = entry.split("source:\n", 1)[1].split("```spirv", 1)[1].split("```", 1)[0]
    asm, binary = f"{out}/k{i}.spvasm", f"{out}/k{i}.spv"
    open(asm, "w").write(source)
    a = subprocess.run(["spirv-as", "--target-env", "spv1.6", asm, "-o", binary], capture_output=True, text=True)
    v = a if a.returncode else subprocess.run(["spirv-val", "--target-env", "vulkan1.3", binary],
                                              capture_output=True, text=True)
    ok = v.returncode == 0
    invalid += not ok
    print(f"{i:3} {'valid  ' if ok else 'INVALID'} {name}")
    if not ok:
        print("     " + (v.stderr + v.stdout).strip().replace("\n", "\n     "))
print(f"{len(entries)} kernels, {invalid} invalid")
sys.exit(1 if invalid else 0)
