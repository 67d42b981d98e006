"""model_step_torch.py — the PyTorch peer of bench/model_step.lua: training
steps (forward, next-token cross-entropy, backward, torch.optim.AdamW) of a
plain PyTorch GPT-2: token and learned position embeddings, pre-LayerNorm
blocks, causal attention written out as softmax(q k^T / sqrt(D) + mask) v
(PyTorch 1.13 has no fused attention on the CPU), tanh GELU MLP, final
LayerNorm and a head tied to the token embedding. Weights are Hugging Face's
GPT-2 names and layout (Conv1D weights (in, out), used as x W), read from a
safetensors file the engine wrote, so both sides start from the same model;
without a file they are drawn as Hugging Face initialises GPT-2.

The token batch is the engine's: id[b, t] = ((b*T + t) * 2654435761 mod 2^32)
mod V (0-based b, t). The loss is the mean over the B*(T-1) predicted
positions of -log softmax(h_t W_te^T)[id[t+1]]; the head runs on those
positions only (the last position predicts nothing), as in the engine.
AdamW: lr 1e-4, betas (0.9, 0.999), eps 1e-8, weight decay 0.01 on the 2-D
tensors, none on biases and LayerNorm (the engine's default rule).

Usage: /usr/bin/python3 bench/model_step_torch.py THREADS V C L H NPOS B T WARMUP STEPS [WEIGHTS|-] [profile|serve]
Prints one line of key=value pairs:
  ms            median wall time of the STEPS timed steps (after WARMUP)
  all_ms        every timed step, comma-separated
  loss_first    the loss of the first step (before any update)
  loss_last     the loss of the last step
  params        parameter count
  rss_kb        VmRSS before the timed steps (model, grads, moments allocated)
  hwm_kb        VmHWM over the timed steps (reset through /proc/self/clear_refs
                after the warm-up)
With "profile", it first prints torch.autograd.profiler's table of one step
(the top ops by self CPU time).
With "serve" (what bench/model_step.lua uses, so that engine and PyTorch
steps alternate one by one), STEPS is ignored: after the warm-up it prints
"ready loss_first=..." and then answers commands read from stdin, one a line:
  step    one timed step: prints "ms=... loss=..."
  reset   resets VmHWM (clear_refs) and VmRSS is noted: prints "ok"
  end     prints "hwm_kb=... rss_kb=... params=..." and exits"""
import json
import math
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from torch_gpt2 import blocks


def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return -1


def reset_hwm():
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def read_safetensors(path):
    """name -> float32 tensor, one tensor read at a time (F32 files only)"""
    out = {}
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        header = json.loads(f.read(n))
        base = 8 + n
        for name, info in header.items():
            if name == "__metadata__":
                continue
            if info["dtype"] != "F32":
                raise SystemExit(f"{path}: tensor '{name}' is {info['dtype']}, expected F32")
            a, b = info["data_offsets"]
            f.seek(base + a)
            buf = bytearray(f.read(b - a))
            out[name] = torch.frombuffer(buf, dtype=torch.float32).reshape(info["shape"]).clone()
    return out


argv = sys.argv[1:]
profile = "profile" in argv
serve = "serve" in argv
argv = [a for a in argv if a not in ("profile", "serve")]
threads, V, C, L, H, NPOS, B, T, WARMUP, STEPS = (int(a) for a in argv[:10])
weights_path = argv[10] if len(argv) > 10 and argv[10] != "-" else None
torch.set_num_threads(threads)
torch.manual_seed(0)
std = 0.02


def init_weights():
    w = {"transformer.wte.weight": torch.randn(V, C) * std, "transformer.wpe.weight": torch.randn(NPOS, C) * std,
         "transformer.ln_f.weight": torch.ones(C), "transformer.ln_f.bias": torch.zeros(C)}
    for i in range(L):
        p = f"transformer.h.{i}."
        w.update({
            p + "ln_1.weight": torch.ones(C), p + "ln_1.bias": torch.zeros(C),
            p + "attn.c_attn.weight": torch.randn(C, 3 * C) * std, p + "attn.c_attn.bias": torch.zeros(3 * C),
            p + "attn.c_proj.weight": torch.randn(C, C) * std / math.sqrt(2 * L),
            p + "attn.c_proj.bias": torch.zeros(C),
            p + "ln_2.weight": torch.ones(C), p + "ln_2.bias": torch.zeros(C),
            p + "mlp.c_fc.weight": torch.randn(C, 4 * C) * std, p + "mlp.c_fc.bias": torch.zeros(4 * C),
            p + "mlp.c_proj.weight": torch.randn(4 * C, C) * std / math.sqrt(2 * L),
            p + "mlp.c_proj.bias": torch.zeros(C),
        })
    return w


W = read_safetensors(weights_path) if weights_path else init_weights()
for name, t in W.items():
    t.requires_grad_()
wte, wpe = W["transformer.wte.weight"], W["transformer.wpe.weight"]
assert wte.shape == (V, C) and wpe.shape == (NPOS, C), "weights do not match the config"
layers = []
for i in range(L):
    p = f"transformer.h.{i}."
    layers.append({k: W[p + k] for k in (
        "ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
        "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
        "mlp.c_proj.weight", "mlp.c_proj.bias")})
lnf_w, lnf_b = W["transformer.ln_f.weight"], W["transformer.ln_f.bias"]
names = sorted(W)
decay = [W[n] for n in names if W[n].dim() >= 2]
no_decay = [W[n] for n in names if W[n].dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-4, betas=(0.9, 0.999), eps=1e-8)
causal = torch.ones(T, T, dtype=torch.bool).triu(1)  # True above the diagonal: hidden
pos = torch.arange(T)


def forward_hidden(ids):
    """ids (B,T) -> final hidden states (B,T,C)"""
    x = blocks(wte[ids] + wpe[pos], layers, H, causal)
    return F.layer_norm(x, (C,), lnf_w, lnf_b, 1e-5)


ids = torch.tensor([[((b * T + t) * 2654435761 % 2**32) % V for t in range(T)] for b in range(B)])
targets = ids[:, 1:].reshape(-1)


def step():
    opt.zero_grad(set_to_none=True)
    h = forward_hidden(ids)
    logits = h[:, :-1].reshape(-1, C) @ wte.t()  # (B*(T-1), V)
    loss = F.cross_entropy(logits, targets)
    loss.backward()
    opt.step()
    return loss.item()


losses = []
for _ in range(WARMUP):
    losses.append(step())
if profile:
    with torch.autograd.profiler.profile() as prof:
        step()
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
nparams = sum(t.numel() for t in W.values())
if serve:
    print(f"ready loss_first={losses[0] if losses else float('nan'):.6f} params={nparams}", flush=True)
    rss, hwm_ok = status("VmRSS"), False
    while True:
        line = sys.stdin.readline()
        if not line:
            break
        cmd = line.strip()
        if cmd == "step":
            t0 = time.perf_counter()
            v = step()
            print(f"ms={1000 * (time.perf_counter() - t0):.3f} loss={v:.6f}", flush=True)
        elif cmd == "reset":
            rss, hwm_ok = status("VmRSS"), reset_hwm()
            print("ok", flush=True)
        elif cmd == "end":
            break
        else:
            print(f"error unknown command {cmd!r}", flush=True)
    print(f"hwm_kb={status('VmHWM') if hwm_ok else -1} rss_kb={rss} params={nparams}", flush=True)
    sys.exit(0)
rss = status("VmRSS")
hwm_ok = reset_hwm()
times = []
for _ in range(STEPS):
    t0 = time.perf_counter()
    losses.append(step())
    times.append(time.perf_counter() - t0)
hwm = status("VmHWM") if hwm_ok else -1
print(f"ms={1000 * statistics.median(times):.3f} all_ms={','.join(f'{1000 * x:.1f}' for x in times)} "
      f"loss_first={losses[0]:.6f} loss_last={losses[-1]:.6f} params={nparams} rss_kb={rss} hwm_kb={hwm}")
