#!/usr/bin/env python3
"""Ship a run's model with the project: pretrained/model.safetensors and pretrained/model.json.

    tools/ship_model.py RUN_DIR OUT_DIR --binary target/release/cifar-webgpu [--data-dir DIR]

The weights are stored as f16 when the native `eval` (f32 arithmetic, all 10,000 test
images, plain and flip TTA) gives the f16 file the same accuracy as the run's f32 file within
0.05 points (issue 12), else as f32. model.json records what the page and the tests check:
the file's SHA-256, and its accuracies as `eval` measures them. Python's standard library only.
"""

import argparse
import hashlib
import json
import math
import os
import re
import struct
import subprocess
import sys
import tempfile

TOLERANCE_POINTS = 0.05


def read_safetensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack_from("<Q", data, 0)
    header = json.loads(data[8 : 8 + n])
    body = data[8 + n :]
    meta = header.pop("__metadata__", {})
    tensors = {}
    for name, t in header.items():
        b, e = t["data_offsets"]
        tensors[name] = (t["dtype"], t["shape"], body[b:e])
    return tensors, meta


def write_safetensors(path, tensors, meta):
    header, chunks, offset = {}, [], 0
    for name in sorted(tensors):
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + len(raw)]}
        chunks.append(raw)
        offset += len(raw)
    header["__metadata__"] = dict(sorted(meta.items()))
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(chunks))
    os.replace(tmp, path)


def to_f16(tensors):
    out = {}
    for name, (dtype, shape, raw) in tensors.items():
        if dtype != "F32":
            out[name] = (dtype, shape, raw)
            continue
        values = [v for (v,) in struct.iter_unpack("<f", raw)]
        try:
            half = struct.pack(f"<{len(values)}e", *values)
        except OverflowError:
            sys.exit(f"{name}: a value is out of f16's range; ship f32")
        if any(math.isinf(v) for (v,) in struct.iter_unpack("<e", half)):
            sys.exit(f"{name}: a value rounds to infinity in f16")
        out[name] = ("F16", shape, half)
    return out


def evaluate(binary, weights, data_dir, tta):
    cmd = [binary, "eval", "--backend", "flex", "--precision", "f32", "--no-download", "--weights", weights]
    if data_dir:
        cmd += ["--data-dir", data_dir]
    if tta:
        cmd.append("--tta")
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stdout}{out.stderr}")
    m = re.search(r"test accuracy ([0-9.]+)% \(10000 images", out.stdout)
    if not m:
        sys.exit(f"{' '.join(cmd)}: no accuracy on 10000 images in its output:\n{out.stdout}")
    return float(m.group(1))


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run_dir")
    p.add_argument("out_dir")
    p.add_argument("--binary", required=True)
    p.add_argument("--data-dir")
    a = p.parse_args()

    source = os.path.join(a.run_dir, "model.safetensors")
    tensors, meta = read_safetensors(source)
    with open(os.path.join(a.run_dir, "config.json")) as f:
        config = json.load(f)
    with open(os.path.join(a.run_dir, "metrics.jsonl")) as f:
        history = [json.loads(line) for line in f if line.strip()]
    if len(history) != config["epochs"]:
        sys.exit(f"{a.run_dir}: {len(history)} of {config['epochs']} epochs: the run is not finished")

    os.makedirs(a.out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        half = os.path.join(tmp, "model.safetensors")
        write_safetensors(half, to_f16(tensors), meta)
        acc = {}
        for label, path in (("f32", source), ("f16", half)):
            acc[label] = (evaluate(a.binary, path, a.data_dir, False), evaluate(a.binary, path, a.data_dir, True))
            print(f"{label}: test accuracy {acc[label][0]:.2f}%, flip TTA {acc[label][1]:.2f}%")
        same = all(abs(x - y) <= TOLERANCE_POINTS for x, y in zip(acc["f32"], acc["f16"]))
        dtype = "f16" if same else "f32"
        target = os.path.join(a.out_dir, "model.safetensors")
        with open(half if same else source, "rb") as f:
            raw = f.read()
        with open(target + ".tmp", "wb") as f:
            f.write(raw)
        os.replace(target + ".tmp", target)

    last = history[-1]
    record = {
        "file": "model.safetensors",
        "sha256": hashlib.sha256(raw).hexdigest(),
        "bytes": len(raw),
        "dtype": dtype,
        "test_images": 10000,
        "test_acc": round(acc[dtype][0] / 100, 4),
        "test_acc_tta": round(acc[dtype][1] / 100, 4),
        "f32_test_acc": round(acc["f32"][0] / 100, 4),
        "f32_test_acc_tta": round(acc["f32"][1] / 100, 4),
        "measured_by": "cifar-webgpu eval --backend flex --precision f32 [--tta]",
        "run": {
            "test_acc": last["test_acc"],
            "test_acc_tta": last.get("test_acc_tta"),
            "epochs": len(history),
            "seconds": sum(m["seconds"] for m in history),
            "device": config.get("device"),
        },
        "config": {k: v for k, v in config.items() if k != "device"},
    }
    tmp = os.path.join(a.out_dir, "model.json.tmp")
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
        f.write("\n")
    os.replace(tmp, os.path.join(a.out_dir, "model.json"))
    print(f"{target}: {dtype}, {len(raw):,} bytes, sha256 {record['sha256']}")


if __name__ == "__main__":
    main()
