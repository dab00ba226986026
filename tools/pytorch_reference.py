#!/usr/bin/env python3
"""PyTorch reference for cifar-webgpu: the same network, recipe and file formats, in PyTorch.

A developer tool, never needed to train or to run the tests (CI has no PyTorch). Install:

    python3 -m venv .venv-torch && .venv-torch/bin/pip install torch numpy safetensors

Subcommands:

    fixture  writes tests/fixtures/parity.safetensors: weights, an input batch, logits, losses,
             every gradient, BatchNorm running stats, parameters after two Adam and two
             SGD-Nesterov steps, and a OneCycleLR table. The Rust parity tests load it.
    bench    training / inference images per second, same shapes and threads as
             `cifar-webgpu bench` (which runs this itself with `--pytorch`). Prints JSON.
    eval     test accuracy of a `model.safetensors` written by `cifar-webgpu train`, loaded
             into the PyTorch module by its state_dict names.

The module below has exactly the `state_dict` names of our `model.safetensors`.
"""

import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


def channels(width):
    return [max(1, round(c * width)) for c in (64, 128, 256, 512)]


def conv_bn(c_in, c_out, dropout, pool=False):
    # conv → [maxpool] → BN → ReLU → Dropout; the pool sits between conv and BN, so the
    # BN of a pooled block is index 2 ("layer1.2"), as in the original notebook.
    layers = [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    layers += [nn.BatchNorm2d(c_out), nn.ReLU(), nn.Dropout(dropout)]
    return layers


class CustomResNet(nn.Module):
    def __init__(self, width=1.0, dropout=0.05, num_classes=10):
        super().__init__()
        c0, c1, c2, c3 = channels(width)
        self.prep = nn.Sequential(*conv_bn(3, c0, dropout))
        self.layer1 = nn.Sequential(*conv_bn(c0, c1, dropout, pool=True))
        self.res1 = nn.Sequential(*conv_bn(c1, c1, dropout), *conv_bn(c1, c1, dropout))
        self.layer2 = nn.Sequential(*conv_bn(c1, c2, dropout, pool=True))
        self.layer3 = nn.Sequential(*conv_bn(c2, c3, dropout, pool=True))
        self.res3 = nn.Sequential(*conv_bn(c3, c3, dropout), *conv_bn(c3, c3, dropout))
        self.pool = nn.MaxPool2d(4)
        self.fc = nn.Linear(c3, num_classes, bias=False)

    def forward(self, x):
        x = self.prep(x)
        x = self.layer1(x)
        x = x + self.res1(x)
        x = self.layer2(x)
        x = self.layer3(x)
        x = x + self.res3(x)
        x = self.pool(x).flatten(1)
        return self.fc(x)


def trainable_params(model):
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def normalise(pixels):
    """uint8 [n, 3, 32, 32] → normalised float, as `augment::to_tensor`."""
    mean = torch.tensor(MEAN, device=pixels.device).view(1, 3, 1, 1) * 255.0
    std = torch.tensor(STD, device=pixels.device).view(1, 3, 1, 1) * 255.0
    return (pixels.float() - mean) / std


def augment(x, gen, pad=4, cutout=8):
    """Reflect-pad + random crop, flip, CutOut as index maps (the ops `augment::augment` uses)."""
    n, dev = x.shape[0], x.device
    # A few integers per image drawn on the host (as ours), the index maps built on x's device.
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    flip = torch.randint(0, 2, (n,), generator=gen).bool().to(dev)
    i = torch.arange(32, device=dev)

    def reflect(offset):
        p = offset[:, None] + i[None, :] - pad
        return torch.where(p < 0, -p, torch.where(p > 31, 62 - p, p))

    rows = reflect(dy)
    cols = reflect(dx)
    cols = torch.where(flip[:, None], cols.flip(1), cols)
    x = x.gather(2, rows.view(n, 1, 32, 1).expand(n, 3, 32, 32))
    x = x.gather(3, cols.view(n, 1, 1, 32).expand(n, 3, 32, 32))
    cy = torch.randint(0, 32 - cutout + 1, (n,), generator=gen).to(dev).view(n, 1, 1)
    cx = torch.randint(0, 32 - cutout + 1, (n,), generator=gen).to(dev).view(n, 1, 1)
    inside = ((i.view(1, 32, 1) >= cy) & (i.view(1, 32, 1) < cy + cutout)
              & (i.view(1, 1, 32) >= cx) & (i.view(1, 1, 32) < cx + cutout))
    return x * (~inside).unsqueeze(1).float()


# ----------------------------------------------------------------------------- fixture

FIXTURE_WIDTH = 0.125  # channels 8/16/32/64: ~100k parameters, every layer kind exercised
FIXTURE_BATCH = 8
WEIGHT_DECAY = 5e-4
# Large enough that the decay term is a sizeable part of every update: with the recipe's 5e-4
# a missing decay stays within the parity tolerance.
STRONG_WEIGHT_DECAY = 0.1
# (lr, momentum or beta1) of the two optimiser steps: momentum changes between them, as under
# OneCycle.
STEPS = [(0.004, 0.95), (0.006, 0.9)]
SCHEDULE = dict(max_lr=0.01, total_steps=48, pct_start=5 / 24, div_factor=25.0,
                final_div_factor=1e4, base_momentum=0.85, max_momentum=0.95)


def fixture_model():
    torch.manual_seed(0)
    model = CustomResNet(FIXTURE_WIDTH, dropout=0.0)
    # BN starts at gamma 1 / beta 0; move them so that a swapped weight/bias would show.
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
    return model


def fixture(out):
    from safetensors.torch import save_file

    torch.use_deterministic_algorithms(True)
    gen = torch.Generator().manual_seed(1)
    pixels = torch.randint(0, 256, (FIXTURE_BATCH, 3, 32, 32), dtype=torch.uint8, generator=gen)
    labels = torch.randint(0, 10, (FIXTURE_BATCH,), generator=gen)
    x = normalise(pixels)

    tensors = {"input": x, "labels": labels}
    model = fixture_model()
    for k, v in model.state_dict().items():
        tensors[f"init/{k}"] = v.clone()

    # Forward and backward in training mode (batch statistics), once.
    model.train()
    logits = model(x)
    loss = F.cross_entropy(logits, labels)
    tensors["forward/logits"] = logits.detach().clone()
    tensors["forward/loss"] = loss.detach().reshape(1).clone()
    tensors["forward/loss_smoothed"] = F.cross_entropy(logits, labels, label_smoothing=0.1).detach().reshape(1)
    loss.backward()
    for k, p in model.named_parameters():
        tensors[f"grad/{k}"] = p.grad.clone()
    for k, v in model.state_dict().items():
        if "running" in k:
            tensors[f"after_forward/{k}"] = v.clone()
    # Inference mode uses the running statistics that one training forward updated.
    model.eval()
    with torch.no_grad():
        tensors["eval/logits"] = model(x).clone()

    def two_steps(name, make):
        model = fixture_model()
        model.train()
        opt = make(model.parameters())
        for lr, momentum in STEPS:
            for group in opt.param_groups:
                group["lr"] = lr
                if "betas" in group:
                    group["betas"] = (momentum, group["betas"][1])
                else:
                    group["momentum"] = momentum
            opt.zero_grad()
            F.cross_entropy(model(x), labels).backward()
            opt.step()
        for k, v in model.state_dict().items():
            if "num_batches" not in k:
                tensors[f"{name}/{k}"] = v.clone()

    for suffix, decay in (("", WEIGHT_DECAY), ("_strong_decay", STRONG_WEIGHT_DECAY)):
        two_steps("adam" + suffix, lambda p: torch.optim.Adam(p, lr=0.0, betas=(0.9, 0.999), eps=1e-8,
                                                              weight_decay=decay))
        two_steps("sgd" + suffix, lambda p: torch.optim.SGD(p, lr=0.0, momentum=0.9, nesterov=True,
                                                            dampening=0, weight_decay=decay))

    # OneCycleLR as the trainer configures it: linear, two phases, momentum cycling.
    opt = torch.optim.Adam([torch.zeros(1, requires_grad=True)], lr=SCHEDULE["max_lr"])
    s = SCHEDULE
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=s["max_lr"], total_steps=s["total_steps"], pct_start=s["pct_start"],
        anneal_strategy="linear", three_phase=False, div_factor=s["div_factor"],
        final_div_factor=s["final_div_factor"], base_momentum=s["base_momentum"],
        max_momentum=s["max_momentum"], cycle_momentum=True)
    lrs, moms = [], []
    for _ in range(s["total_steps"]):
        lrs.append(opt.param_groups[0]["lr"])
        moms.append(opt.param_groups[0]["betas"][0])
        opt.step()
        sched.step()

    meta = {
        "width": FIXTURE_WIDTH,
        "batch_size": FIXTURE_BATCH,
        "dropout": 0.0,
        "weight_decay": WEIGHT_DECAY,
        "strong_weight_decay": STRONG_WEIGHT_DECAY,
        "steps": STEPS,
        "schedule": dict(SCHEDULE, lr=lrs, momentum=moms),
        "torch_version": torch.__version__,
        "trainable_params_width_1": trainable_params(CustomResNet(1.0)),
    }
    tensors = {k: v.contiguous() for k, v in tensors.items()}
    os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
    tmp = out + ".tmp"
    save_file(tensors, tmp, metadata={"fixture": json.dumps(meta)})
    os.replace(tmp, out)
    size = os.path.getsize(out)
    print(f"wrote {out} ({len(tensors)} tensors, {size / 1024:.0f} KiB), torch {torch.__version__}")


# ----------------------------------------------------------------------------- bench

def rss_bytes():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def reset_peak_rss():
    # Linux: writing 5 resets VmHWM (the peak resident set) to the current RSS.
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_bytes():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


MODES = ("fp32", "tf32", "channels_last", "amp", "amp_channels_last")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_row(width, batch, warmup, steps, device=torch.device("cpu"), mode="fp32"):
    """One row: same work per step as `Trainer::train_step` (batch gather, augmentation,
    forward, cross-entropy, backward, Adam with L2 decay, OneCycle step).

    Modes: fp32 (exact fp32: no TF32 on CUDA), tf32 (PyTorch's CUDA default: convolutions in
    TF32), channels_last (fp32 in NHWC), amp (autocast: bf16 on the CPU, fp16 + GradScaler on
    CUDA), amp_channels_last (both)."""
    cuda = device.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = mode == "tf32"
        torch.backends.cuda.matmul.allow_tf32 = mode == "tf32"
    channels_last = mode.endswith("channels_last")
    amp = mode.startswith("amp")
    amp_dtype = torch.float16 if cuda else torch.bfloat16
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    gen = torch.Generator().manual_seed(1)
    n = batch * max(1, warmup + steps)
    images = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=gen).to(device)
    labels = (torch.arange(n) % 10).to(device)
    reset_peak_rss()
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = rss_bytes()
    start = time.perf_counter()
    model = CustomResNet(width).to(device).to(memory_format=fmt).train()
    opt = torch.optim.Adam(model.parameters(), lr=0.01, eps=1e-8, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=0.01, total_steps=warmup + steps + 1, pct_start=5 / 24,
        anneal_strategy="linear", three_phase=False)
    scaler = torch.amp.GradScaler("cuda", enabled=amp and cuda)
    order = torch.randperm(n, generator=gen).to(device)

    def step(i):
        idx = order[(i * batch) % n:][:batch]
        x = augment(normalise(images[idx]), gen).contiguous(memory_format=fmt)
        with torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
            loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        sched.step()
        return loss.detach()

    step(0).item()
    first_step_s = time.perf_counter() - start
    for i in range(1, warmup):
        step(i)
    sync(device)
    t = time.perf_counter()
    for i in range(steps):
        loss = step(warmup + i)
    loss.item()
    train = steps * batch / (time.perf_counter() - t)

    model.eval()
    x = images[:batch]
    with torch.no_grad(), torch.autocast(device.type, dtype=amp_dtype, enabled=amp):
        for _ in range(max(1, warmup)):
            F.softmax(model(normalise(x).contiguous(memory_format=fmt)), 1).float().cpu().numpy()
        t = time.perf_counter()
        for _ in range(steps):
            F.softmax(model(normalise(x).contiguous(memory_format=fmt)), 1).float().cpu().numpy()
        infer = steps * batch / (time.perf_counter() - t)
    if cuda:
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = peak_rss_bytes() - base
    return {
        "backend": "pytorch" if mode == "fp32" else f"pytorch-{mode}",
        "mode": mode,
        "device": torch.cuda.get_device_name(device) if cuda else "cpu",
        "width": width,
        "batch_size": batch,
        "first_step_s": first_step_s,
        "train_images_per_sec": train,
        "infer_images_per_sec": infer,
        "peak_bytes": max(0, peak),
    }


def bench(args):
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("bench --device cuda: PyTorch sees no CUDA device")
    for mode in args.mode:
        if mode not in MODES:
            sys.exit(f"bench --mode: unknown mode {mode!r} (one of {', '.join(MODES)})")
        if mode == "tf32" and device.type != "cuda":
            sys.exit("bench --mode tf32 is a CUDA mode")
    rows = []
    for width in args.width:
        for batch in args.batch_size:
            for mode in args.mode:
                row = bench_row(width, batch, args.warmup, args.steps, device, mode)
                row["threads"] = args.threads
                row["torch_version"] = torch.__version__
                print(f"pytorch {mode} on {row['device']} width {width} batch {batch}: "
                      f"train {row['train_images_per_sec']:.1f} img/s, "
                      f"inference {row['infer_images_per_sec']:.1f} img/s", file=sys.stderr)
                rows.append(row)
    print(json.dumps(rows))


# ----------------------------------------------------------------------------- eval

def load_test_batch(data_dir):
    path = os.path.join(data_dir, "test_batch.bin")
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size != 10000 * 3073:
        sys.exit(f"{path}: expected {10000 * 3073} bytes, found {raw.size}")
    raw = raw.reshape(10000, 3073)
    return torch.from_numpy(raw[:, 1:].reshape(-1, 3, 32, 32).copy()), torch.from_numpy(raw[:, 0].astype(np.int64))


def evaluate(args):
    from safetensors import safe_open
    from safetensors.torch import load_file

    with safe_open(args.weights, "pt") as f:
        meta = f.metadata() or {}
    state = load_file(args.weights)
    config = json.loads(meta["model_config"]) if "model_config" in meta else {}
    width = config.get("width", state["prep.0.weight"].shape[0] / 64)
    model = CustomResNet(width, num_classes=state["fc.weight"].shape[0])
    model.load_state_dict(state, strict=True)  # every name must match, both ways
    model.eval()
    images, labels = load_test_batch(args.data_dir)
    torch.set_num_threads(args.threads)
    preds = []
    with torch.no_grad():
        for i in range(0, len(labels), 500):
            x = normalise(images[i:i + 500])
            p = F.softmax(model(x), 1)
            if args.tta:
                p = (p + F.softmax(model(x.flip(3)), 1)) / 2
            preds.append(p.argmax(1))
    preds = torch.cat(preds)
    acc = (preds == labels).float().mean().item()
    if args.predictions:
        with open(args.predictions, "w") as f:
            f.writelines(f"{p}\n" for p in preds.tolist())
    print(f"{args.weights}: width {width} — PyTorch {torch.__version__} test accuracy "
          f"{100 * acc:.2f}% ({len(labels)} images{', flip TTA' if args.tta else ''})")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("fixture", help="write the parity fixture")
    f.add_argument("--out", default="tests/fixtures/parity.safetensors")
    b = sub.add_parser("bench", help="images/s, printed as JSON rows")
    floats = lambda s: [float(v) for v in s.split(",")]
    ints = lambda s: [int(v) for v in s.split(",")]
    b.add_argument("--width", type=floats, default=[0.25, 1.0])
    b.add_argument("--batch-size", type=ints, default=[128, 512])
    b.add_argument("--warmup", type=int, default=2)
    b.add_argument("--steps", type=int, default=5)
    b.add_argument("--threads", type=int, default=os.cpu_count())
    b.add_argument("--device", default="cpu", help="cpu or cuda")
    b.add_argument("--mode", type=lambda s: s.split(","), default=["fp32"],
                   help="comma list of " + ", ".join(MODES))
    e = sub.add_parser("eval", help="test accuracy of a model.safetensors")
    e.add_argument("--weights", required=True)
    e.add_argument("--data-dir", default=os.environ.get("CIFAR10_DIR", "data/cifar-10-batches-bin"))
    e.add_argument("--tta", action="store_true")
    e.add_argument("--predictions", help="write one predicted class per line")
    e.add_argument("--threads", type=int, default=os.cpu_count())
    args = p.parse_args()
    if args.cmd == "fixture":
        fixture(args.out)
    elif args.cmd == "bench":
        bench(args)
    else:
        evaluate(args)


if __name__ == "__main__":
    main()
