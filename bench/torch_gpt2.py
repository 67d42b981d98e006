"""bench/torch_gpt2.py — the GPT-2 blocks the PyTorch peers of the benchmarks
share (bench/memory_torch.py, bench/model_step_torch.py), written as plain
torch ops: pre-LayerNorm, causal attention, tanh GELU, Conv1D weights (in,out)
under Hugging Face's names. Not here: embeddings, the final LayerNorm, the
head, the optimiser."""
import math

import torch
import torch.nn.functional as F


def blocks(x, layers, heads, causal):
    """x (B,T,C) through each layer's dict of weights ("ln_1.weight",
    "attn.c_attn.weight", ...); causal (T,T) is True where a key is hidden"""
    Bn, Tn, C = x.shape
    D = C // heads
    for p in layers:
        h = F.layer_norm(x, (C,), p["ln_1.weight"], p["ln_1.bias"], 1e-5)
        qkv = torch.addmm(p["attn.c_attn.bias"], h.view(-1, C), p["attn.c_attn.weight"]).view(Bn, Tn, 3, heads, D)
        q, k, v = qkv.unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
        att = att.masked_fill(causal, -math.inf)
        o = att.softmax(-1) @ v
        o = o.transpose(1, 2).reshape(Bn * Tn, C)
        x = x + torch.addmm(p["attn.c_proj.bias"], o, p["attn.c_proj.weight"]).view(Bn, Tn, C)
        h = F.layer_norm(x, (C,), p["ln_2.weight"], p["ln_2.bias"], 1e-5)
        h = F.gelu(torch.addmm(p["mlp.c_fc.bias"], h.view(-1, C), p["mlp.c_fc.weight"]), approximate="tanh")
        x = x + torch.addmm(p["mlp.c_proj.bias"], h, p["mlp.c_proj.weight"]).view(Bn, Tn, C)
    return x
