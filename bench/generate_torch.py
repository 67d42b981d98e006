"""generate_torch.py — the PyTorch peer of bench/generate.lua: a plain
PyTorch GPT-2 (learned positions, pre-LayerNorm blocks, tanh GELU, tied
head) decoding with a preallocated KV cache, the same shapes and sampling
(softmax(logits / T) with torch.multinomial, plus the sampled token's
log-probability, as PPO needs) as the engine's E.generate.

Usage: /usr/bin/python3 bench/generate_torch.py THREADS REPS MODE [MODEL]
  MODE: sample (temperature 1), greedy, or topkp (T 0.8, top_k 50, top_p 0.9)
  MODEL: a (default: vocab 8192, d 256, 4 layers, 4 heads) or tiny (the
  shapes of examples/default/model: vocab 257, d 128, 4 layers, 4 heads)
Prints one line: the median over REPS runs of the new tokens per second."""
import math
import sys
import time

import torch
import torch.nn.functional as F

threads, reps, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
config = sys.argv[4] if len(sys.argv) > 4 else "a"
torch.set_num_threads(threads)
torch.manual_seed(0)

if config == "tiny":
    V, C, L, H, NPOS = 257, 128, 4, 4, 192
else:
    V, C, L, H, NPOS = 8192, 256, 4, 4, 1024
B, P, N = 8, 32, 128
D = C // H
std = 0.02


def normal(*shape, s=std):
    return torch.randn(*shape) * s


wte, wpe = normal(V, C), normal(NPOS, C)
layers = []
for _ in range(L):
    layers.append({
        "ln1_w": torch.ones(C), "ln1_b": torch.zeros(C),
        "attn_w": normal(C, 3 * C), "attn_b": torch.zeros(3 * C),
        "proj_w": normal(C, C, s=std / math.sqrt(2 * L)), "proj_b": torch.zeros(C),
        "ln2_w": torch.ones(C), "ln2_b": torch.zeros(C),
        "fc_w": normal(C, 4 * C), "fc_b": torch.zeros(4 * C),
        "fc2_w": normal(4 * C, C, s=std / math.sqrt(2 * L)), "fc2_b": torch.zeros(C),
    })
lnf_w, lnf_b = torch.ones(C), torch.zeros(C)
causal = torch.ones(P + N, P + N, dtype=torch.bool).triu(1)  # True above the diagonal: hidden


def forward(ids, pos0, cache):
    """ids (B,T) at positions pos0.. -> logits of the last position (B,V); fills cache"""
    Bn, T = ids.shape
    x = wte[ids] + wpe[pos0:pos0 + T]
    for li, p in enumerate(layers):
        h = F.layer_norm(x, (C,), p["ln1_w"], p["ln1_b"], 1e-5)
        qkv = torch.addmm(p["attn_b"], h.view(-1, C), p["attn_w"]).view(Bn, T, 3, H, D)
        q, k, v = qkv.unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        kc, vc = cache[li]
        kc[:, :, pos0:pos0 + T] = k
        vc[:, :, pos0:pos0 + T] = v
        k, v = kc[:, :, :pos0 + T], vc[:, :, :pos0 + T]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(D))
        if T > 1:
            att = att.masked_fill(causal[pos0:pos0 + T, :pos0 + T], -math.inf)
        o = att.softmax(-1) @ v
        o = o.transpose(1, 2).reshape(Bn * T, C)
        x = x + torch.addmm(p["proj_b"], o, p["proj_w"]).view(Bn, T, C)
        h = F.layer_norm(x, (C,), p["ln2_w"], p["ln2_b"], 1e-5)
        h = F.gelu(torch.addmm(p["fc_b"], h.view(-1, C), p["fc_w"]), approximate="tanh")
        x = x + torch.addmm(p["fc2_b"], h, p["fc2_w"]).view(Bn, T, C)
    x = F.layer_norm(x[:, -1], (C,), lnf_w, lnf_b, 1e-5)
    return x @ wte.t()


def choose(logits, gen):
    """the next token of each row and its log-probability under the sampled distribution"""
    if mode == "greedy":
        tok = logits.argmax(-1, keepdim=True)
        return tok, torch.log_softmax(logits, -1).gather(1, tok)
    if mode == "topkp":
        s = logits / 0.8
        kth = torch.topk(s, 50, dim=-1).values[:, -1:]
        s = s.masked_fill(s < kth, -math.inf)
        sorted_s, idx = torch.sort(s, dim=-1)
        cum = sorted_s.softmax(-1).cumsum(-1)
        remove = cum <= 1 - 0.9
        remove[:, -1] = False
        s = s.masked_fill(remove.scatter(1, idx, remove), -math.inf)
    else:
        s = logits
    logp = torch.log_softmax(s, -1)
    tok = torch.multinomial(logp.exp(), 1, generator=gen)
    return tok, logp.gather(1, tok)


def generate(prompts, gen):
    cache = [(torch.zeros(B, H, P + N, D), torch.zeros(B, H, P + N, D)) for _ in range(L)]
    logits = forward(prompts, 0, cache)
    out, lps = [], []
    for t in range(N):
        tok, lp = choose(logits, gen)
        out.append(tok)
        lps.append(lp)
        if t + 1 < N:
            logits = forward(tok, P + t, cache)
    return torch.cat(out, 1), torch.cat(lps, 1)


prompts = torch.randint(0, V, (B, P), generator=torch.Generator().manual_seed(1))
with torch.inference_mode():
    gen = torch.Generator().manual_seed(2)
    generate(prompts, gen)
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        generate(prompts, gen)
        times.append(time.perf_counter() - t0)
times.sort()
print(f"{B * N / times[len(times) // 2]:.1f}")
