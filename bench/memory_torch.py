"""memory_torch.py — the PyTorch peer of bench/memory.lua: the memory of one
DPO training step (forward over chosen + rejected, the DPO loss, backward,
gradient clipping, torch.optim.AdamW) on a plain PyTorch GPT-2 (learned
positions, pre-LayerNorm blocks, tanh GELU, tied head, attention as
softmax(q k^T / sqrt(d) + causal mask) v, as PyTorch 1.13 has no fused
attention on the CPU), with the batch shape bench/memory.lua uses.

Token log-probs are taken as TRL does: log_softmax(logits).gather(labels).
The reference sums are the model's own, computed without grad before the
step (so the step starts at h = 0, as a run does).

Usage: /usr/bin/python3 bench/memory_torch.py THREADS V C L H NPOS ROWS T PROMPT
Prints one line of key=value pairs (bytes, and KiB for the RSS figures):
  params grads moments   the sizes of the parameters, their .grad and
                         AdamW's exp_avg + exp_avg_sq
  saved                  bytes of the distinct storages autograd saved for
                         backward (saved_tensors_hooks), parameters excluded
  rss_before             VmRSS before the measured step (model, grads and
                         moments already allocated by a warm-up step)
  hwm_step               VmHWM of the measured step (reset through
                         /proc/self/clear_refs just before it)
  rss_after              VmRSS after it
PyTorch 1.13 keeps no allocator statistics for CPU memory, so the peak is
the process's resident high-water mark."""
import math
import sys

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
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


threads, V, C, L, H, NPOS, R, T, PROMPT = (int(a) for a in sys.argv[1:10])
torch.set_num_threads(threads)
torch.manual_seed(0)
std = 0.02


def param(*shape, s=std, fill=None):
    t = torch.full(shape, fill) if fill is not None else torch.randn(*shape) * s
    return t.requires_grad_()


wte, wpe = param(V, C), param(NPOS, C)
layers = []
for _ in range(L):
    layers.append({
        "ln_1.weight": param(C, fill=1.0), "ln_1.bias": param(C, fill=0.0),
        "attn.c_attn.weight": param(C, 3 * C), "attn.c_attn.bias": param(3 * C, fill=0.0),
        "attn.c_proj.weight": param(C, C, s=std / math.sqrt(2 * L)), "attn.c_proj.bias": param(C, fill=0.0),
        "ln_2.weight": param(C, fill=1.0), "ln_2.bias": param(C, fill=0.0),
        "mlp.c_fc.weight": param(C, 4 * C), "mlp.c_fc.bias": param(4 * C, fill=0.0),
        "mlp.c_proj.weight": param(4 * C, C, s=std / math.sqrt(2 * L)), "mlp.c_proj.bias": param(C, fill=0.0),
    })
lnf_w, lnf_b = param(C, fill=1.0), param(C, fill=0.0)
params = [wte, wpe, lnf_w, lnf_b] + [p for layer in layers for p in layer.values()]
decay = [p for p in params if p.dim() == 2]
no_decay = [p for p in params if p.dim() < 2]
opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.0}, {"params": no_decay, "weight_decay": 0.0}],
                        lr=1e-5)


def forward(ids):
    """ids (R,T) -> logits (R,T,V)"""
    Tn = ids.shape[1]
    causal = torch.ones(Tn, Tn, dtype=torch.bool).triu(1)
    x = wte[ids] + wpe[:Tn]
    x = blocks(x, layers, H, causal)
    x = F.layer_norm(x, (C,), lnf_w, lnf_b, 1e-5)
    return x @ wte.t()


def batch(rows, length, prompt, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, min(V, 257), (rows, length), generator=g)
    loss_mask = torch.zeros(rows, length)
    loss_mask[:, prompt:] = 1
    return ids, loss_mask


def sequence_logps(ids, loss_mask):
    """(R) sums of the completion tokens' log-probs"""
    logits = forward(ids)
    labels = ids[:, 1:]
    lp = logits[:, :-1].log_softmax(-1).gather(2, labels.unsqueeze(2)).squeeze(2)
    return (lp * loss_mask[:, 1:]).sum(1)


def loss_of(ids, loss_mask, ref, beta=0.1):
    """DPO (Rafailov et al. 2023, Eq. 7); ref: the reference's sums (the
    model's own before the step, as bench/memory.lua takes them)"""
    S = sequence_logps(ids, loss_mask) - ref
    B = ids.shape[0] // 2
    h = S[:B] - S[B:]
    return -F.logsigmoid(beta * h).mean()


def reference(ids, loss_mask):
    with torch.no_grad():
        return sequence_logps(ids, loss_mask)


def step(ids, loss_mask, ref=None):
    ref = reference(ids, loss_mask) if ref is None else ref
    opt.zero_grad()
    loss = loss_of(ids, loss_mask, ref)
    loss.item()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


# warm-up on a small batch: allocates the grads and AdamW's moments
step(*batch(2, 16, 4, 1))
ids, mask = batch(R, T, PROMPT, 2)
ref = reference(ids, mask)
rss_before = status("VmRSS")
reset_hwm()
step(ids, mask, ref)
hwm_step = status("VmHWM")
rss_after = status("VmRSS")

# the tensors autograd saves for backward, counted once per storage
param_ptrs = {p.data_ptr() for p in params}
seen = {}


def pack(t):
    s = t.storage() if hasattr(t, "storage") else None
    if s is not None and s.data_ptr() not in param_ptrs:
        seen[s.data_ptr()] = s.nbytes() if hasattr(s, "nbytes") else s.size() * s.element_size()
    return t


with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
    loss = loss_of(ids, mask, ref)
saved = sum(seen.values())
del loss

nparams = sum(p.numel() for p in params)
moments = sum(s["exp_avg"].numel() + s["exp_avg_sq"].numel() for s in opt.state.values())
print(f"numel={nparams} params={4 * nparams} grads={4 * sum(p.grad.numel() for p in params)} "
      f"moments={4 * moments} saved={saved} rss_before={rss_before} hwm_step={hwm_step} rss_after={rss_after}")
