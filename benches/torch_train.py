#!/usr/bin/env python3
"""PyTorch's side of `tinylm bench train`: eager fp32 AdamW steps of the same GPT.

Usage:
  python3 benches/torch_train.py PRESET [--batch B] [--warmup W] [--steps S] [--optimizer O]
                                        [--autocast bf16]

PRESET is one of `tinylm bench train`'s presets (bench-ref, default, bench-8l,
bench-gpt2s); the shapes below are theirs. The model is torch_reference.py's
`build_gpt` (pre-LN, GELU 4x MLP, tied head, biases, SDPA causal attention), with
rotary positions (GPT-NeoX half-split layout, base 10000, as tinylm's kernels/rope.rs)
instead of learned ones for `default`. AdamW(lr, (0.9, 0.95), wd 0.1), 2 threads; for
`default`, as tinylm's default, the blocks' matrices take torch.optim.Muon instead
(momentum 0.95, Nesterov, 5 Newton-Schulz steps, adjust_lr_fn="match_rms_adamw": the
same update as src/train/muon.rs) and everything else AdamW.
Token ids are random: a step's time does not depend on them. `--autocast bf16` runs the
forward (and so the backward's products) under `torch.autocast("cpu", dtype=torch.bfloat16)`,
the CPU mixed precision a PyTorch user reaches for, against `tinylm bench train --dtype bf16`;
the case is then `gpt_step_sdpa_autocast_bf16`.

Prints one JSON object in the style of torch_reference.py's `gpt_step_*` records:
median step ms, tokens/s, phase medians, parameter count, and peak-RSS growth
(VmHWM at the end minus VmRSS once the model and inputs exist; the kernel's peak
counter is reset there). When ../shared/bench/torch_reference.py is reachable, its
`build_gpt` is built at the same shape and must have the same parameter shapes
(learned positions only: it has no rotary form).
"""
import argparse
import json
import os
import statistics
import sys
import time

THREADS = 2
# Set before torch loads, as torch_reference.py's parent does for its children.
os.environ.setdefault("OMP_NUM_THREADS", str(THREADS))
os.environ.setdefault("MKL_NUM_THREADS", str(THREADS))

# name: (V, T, L, H, C, B, positions, lr, warm-up steps, timed steps, optimizer), as
# src/train/config.rs's presets and src/bench/train.rs's step counts. The same shapes and
# step, not the same initialisation (PyTorch's module defaults): a speed comparison only.
PRESETS = {
    "bench-ref": (256, 256, 4, 4, 256, 16, "learned", 1e-3, 2, 7, "adamw"),
    "default": (8192, 256, 4, 4, 256, 4, "rotary", 5e-3, 2, 7, "muon"),
    "bench-8l": (256, 512, 8, 8, 512, 8, "learned", 1e-3, 1, 5, "adamw"),
    "bench-gpt2s": (8192, 1024, 12, 12, 768, 2, "learned", 6e-4, 1, 3, "adamw"),
}

REFERENCE = os.path.join(os.path.dirname(os.path.abspath(__file__)),
                         "..", "..", "shared", "bench", "torch_reference.py")


def make_optimizers(torch, model, lr, optimizer):
    """AdamW on everything, or Muon on the blocks' matrices and AdamW on the rest."""
    if optimizer == "adamw":
        return [torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)]
    matrices = [p for n, p in model.named_parameters() if n.startswith("blocks.") and p.ndim == 2]
    ids = {id(p) for p in matrices}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [
        torch.optim.Muon(matrices, lr=lr, weight_decay=0.1, adjust_lr_fn="match_rms_adamw"),
        torch.optim.AdamW(rest, lr=lr, betas=(0.9, 0.95), weight_decay=0.1),
    ]


def proc_status():
    d = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmHWM", "VmRSS")):
                k, v = line.split(":")
                d[k] = int(v.split()[0]) * 1024  # bytes
    return d


def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass
    return proc_status()["VmRSS"]


def rope_tables(torch, t, d):
    """cos, sin of p·θ_i, θ_i = 10000^(-2i/D): [T, D/2], computed in f64 as tinylm does."""
    i = torch.arange(d // 2, dtype=torch.float64)
    theta = 10000.0 ** (-2.0 * i / d)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * theta[None, :]
    return ang.cos().float(), ang.sin().float()


def rotate(torch, x, cos, sin):
    # x [B, H, T, D]: dimensions i and i + D/2 form a pair.
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def build_gpt(torch, vocab, n_layer, n_head, n_embd, block, positions):
    import torch.nn as nn
    import torch.nn.functional as F

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.c_attn = nn.Linear(n_embd, 3 * n_embd)
            self.c_proj = nn.Linear(n_embd, n_embd)

        def forward(self, x, rope):
            B, T, C = x.shape
            q, k, v = self.c_attn(x).split(n_embd, dim=2)
            # [B, T, C] -> [B, H, T, D]
            q, k, v = (t_.view(B, T, n_head, C // n_head).transpose(1, 2) for t_ in (q, k, v))
            if rope is not None:
                q, k = rotate(torch, q, *rope), rotate(torch, k, *rope)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            y = y.transpose(1, 2).contiguous().view(B, T, C)
            return self.c_proj(y)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.ln_1 = nn.LayerNorm(n_embd)
            self.attn = Attn()
            self.ln_2 = nn.LayerNorm(n_embd)
            self.fc = nn.Linear(n_embd, 4 * n_embd)
            self.act = nn.GELU()
            self.proj = nn.Linear(4 * n_embd, n_embd)

        def forward(self, x, rope):
            x = x + self.attn(self.ln_1(x), rope)
            x = x + self.proj(self.act(self.fc(self.ln_2(x))))
            return x

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(vocab, n_embd)
            if positions == "learned":
                self.wpe = nn.Embedding(block, n_embd)
            self.blocks = nn.ModuleList([Block() for _ in range(n_layer)])
            self.ln_f = nn.LayerNorm(n_embd)
            self.lm_head = nn.Linear(n_embd, vocab, bias=False)
            self.lm_head.weight = self.wte.weight  # tied
            self.rope = rope_tables(torch, block, n_embd // n_head) if positions == "rotary" else None

        def forward(self, idx, targets):
            B, T = idx.shape
            x = self.wte(idx)
            rope = None
            if positions == "learned":
                x = x + self.wpe(torch.arange(T, device=idx.device))
            else:
                rope = (self.rope[0][:T], self.rope[1][:T])
            for blk in self.blocks:
                x = blk(x, rope)
            logits = self.lm_head(self.ln_f(x))
            return F.cross_entropy(logits.view(-1, vocab), targets.view(-1))

    return GPT()


def reference_shapes(torch, vocab, n_layer, n_head, n_embd, block):
    """Parameter shapes of torch_reference.py's build_gpt at this shape, or None."""
    if not os.path.exists(REFERENCE):
        return None
    import importlib.util
    spec = importlib.util.spec_from_file_location("torch_reference", REFERENCE)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ref = mod.build_gpt(torch, vocab, n_layer, n_head, n_embd, block, "sdpa")
    return [tuple(p.shape) for p in ref.parameters()]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("--batch", type=int, help="sequences a step (default: the preset's)")
    ap.add_argument("--warmup", type=int, help="untimed steps first")
    ap.add_argument("--steps", type=int, help="timed steps")
    ap.add_argument("--optimizer", choices=["adamw", "muon"],
                    help="the matrices' update rule (default: the preset's; `default --batch 8"
                         " --optimizer adamw` is the default as it was before Muon)")
    ap.add_argument("--autocast", choices=["bf16"],
                    help="run the forward under torch.autocast('cpu', dtype=torch.bfloat16)")
    a = ap.parse_args()
    vocab, block, n_layer, n_head, n_embd, batch, positions, lr, warmup, steps, optimizer = (
        PRESETS[a.preset])
    batch = a.batch or batch
    optimizer = a.optimizer or optimizer
    warmup = a.warmup if a.warmup is not None else warmup
    steps = a.steps or steps
    if batch < 1 or warmup < 0 or steps < 1:
        sys.exit("error: --batch and --steps must be at least 1, --warmup at least 0")

    import torch
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    model = build_gpt(torch, vocab, n_layer, n_head, n_embd, block, positions)
    nparams = sum(p.numel() for p in model.parameters())
    if positions == "learned":
        ref = reference_shapes(torch, vocab, n_layer, n_head, n_embd, block)
        if ref is not None and ref != [tuple(p.shape) for p in model.parameters()]:
            sys.exit("error: the model differs from torch_reference.py's build_gpt")
    else:
        ref = None
    opts = make_optimizers(torch, model, lr, optimizer)
    data = torch.randint(0, vocab, (batch, block + 1))
    x, y = data[:, :-1].contiguous(), data[:, 1:].contiguous()
    base = reset_peak()

    phases = {"fwd": [], "bwd": [], "opt": []}

    def step():
        t0 = time.perf_counter()
        for opt in opts:
            opt.zero_grad(set_to_none=True)
        if a.autocast:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                loss = model(x, y)
        else:
            loss = model(x, y)
        t1 = time.perf_counter()
        loss.backward()
        t2 = time.perf_counter()
        for opt in opts:
            opt.step()
        t3 = time.perf_counter()
        for k, s, e in (("fwd", t0, t1), ("bwd", t1, t2), ("opt", t2, t3)):
            phases[k].append(e - s)
        return loss.item()

    tw = time.perf_counter()
    for _ in range(warmup):
        step()
    warm_s = time.perf_counter() - tw
    for k in phases:
        phases[k].clear()
    ts, losses = [], []
    for _ in range(steps):
        t0 = time.perf_counter()
        losses.append(step())
        ts.append(time.perf_counter() - t0)
    peak = proc_status()["VmHWM"] - base
    toks = batch * block
    med = statistics.median(ts)
    out = {
        "case": "gpt_step_sdpa_autocast_bf16" if a.autocast else "gpt_step_sdpa_eager",
        "preset": a.preset,
        "batch_size": batch, "block_size": block, "vocab_size": vocab,
        "n_layer": n_layer, "n_head": n_head, "n_embd": n_embd, "positions": positions,
        "optimizer": optimizer, "params": nparams, "reference_checked": ref is not None,
        "median_ms": med * 1e3, "min_ms": min(ts) * 1e3, "max_ms": max(ts) * 1e3,
        "reps": steps, "warmup": warmup,
        "phase_median_ms": {k: statistics.median(v) * 1e3 for k, v in phases.items()},
        "tokens_per_s_median": toks / med, "tokens_per_s": toks * steps / sum(ts),
        "warmup_s": warm_s, "loss_first": losses[0], "loss_last": losses[-1],
        "peak_delta_bytes": peak,
        "threads": torch.get_num_threads(), "torch_version": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
