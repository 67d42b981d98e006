#!/usr/bin/python3
"""make_model_fixtures.py -- the parity fixtures of tests/lua/models_spec.lua.

Writes three small randomly initialised models in Hugging Face's layout
(config.json with HF keys, model.safetensors) and the logits a plain-PyTorch
implementation of each architecture gives on fixed inputs:

  tests/fixtures/models/gpt2/    GPT-2, tied head, stored as the original
                                 checkpoints are (no "transformer." prefix,
                                 with the attn.bias causal-mask buffers)
  tests/fixtures/models/llama/   Llama: grouped-query attention (4 heads,
                                 2 key/value heads), untied head, llama3
                                 rope scaling
  tests/fixtures/models/qwen2/   Qwen2: q/k/v biases, tied head, rope_theta 1e6

Each directory also gets inputs.json (the token ids and attention masks of
two cases: "plain", a (2,7) batch without padding, and "padded", a (3,7)
left-padded batch with its attention_mask) and expected.safetensors
("plain.logits", "padded.logits", float32).

The transformers package is not available here, so the references below
re-implement Hugging Face's modeling code (GPT2LMHeadModel and
LlamaForCausalLM / Qwen2ForCausalLM, eager attention, float32) op for op:
Conv1D weights (in, out); GELU in its tanh form; RMSNorm in float32;
inv_freq = 1 / theta^(arange(0, D, 2)/D) and cos/sin of
cat(freqs, freqs) with rotate_half; repeat_kv for grouped-query attention;
additive masks at finfo(float32).min. Positions of the padded case are
HF generate()'s: cumsum(attention_mask) - 1, and 1 on padding. The logits at
padding positions are not meaningful (the tests skip them).

Run with Debian's PyTorch:  /usr/bin/python3 scripts/make_model_fixtures.py
The safetensors files are written by this script itself (8-byte
little-endian header length, JSON header, row-major little-endian data).
"""
import json
import math
import os
import struct
import sys

import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "models")
MIN = torch.finfo(torch.float32).min


# ---- safetensors --------------------------------------------------------------

def save_safetensors(path, tensors, metadata=None):
    """name -> float32 tensor, written in name order; header padded to 8 bytes"""
    header, blobs, offset = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].detach().to(torch.float32).contiguous()
        data = t.numpy().astype("<f4").tobytes()
        header[name] = {"dtype": "F32", "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    if metadata is not None:
        header["__metadata__"] = metadata
    text = json.dumps(header, separators=(",", ":")).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


# ---- GPT-2 (GPT2LMHeadModel, eager attention) -----------------------------------

def gelu_new(x):
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


def gpt2_forward(cfg, sd, ids, mask=None, pos=None):
    B, T = ids.shape
    C, H, L = cfg["n_embd"], cfg["n_head"], cfg["n_layer"]
    D, eps = C // H, cfg["layer_norm_epsilon"]
    if pos is None:
        pos = torch.arange(T).unsqueeze(0).expand(B, T)
    x = sd["wte.weight"][ids] + sd["wpe.weight"][pos]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool)).view(1, 1, T, T)
    ext = None if mask is None else (1.0 - mask[:, None, None, :].to(torch.float32)) * MIN
    for i in range(L):
        p = "h.%d." % i
        h = F.layer_norm(x, (C,), sd[p + "ln_1.weight"], sd[p + "ln_1.bias"], eps)
        qkv = torch.addmm(sd[p + "attn.c_attn.bias"], h.view(-1, C), sd[p + "attn.c_attn.weight"]).view(B, T, 3 * C)
        q, k, v = qkv.split(C, dim=2)
        q, k, v = (t.view(B, T, H, D).permute(0, 2, 1, 3) for t in (q, k, v))
        w = torch.matmul(q, k.transpose(-1, -2)) / torch.full([], D ** 0.5)
        w = torch.where(causal, w, torch.full([], MIN))
        if ext is not None:
            w = w + ext
        w = torch.softmax(w, dim=-1)
        a = torch.matmul(w, v).permute(0, 2, 1, 3).contiguous().view(B, T, C)
        a = torch.addmm(sd[p + "attn.c_proj.bias"], a.view(-1, C), sd[p + "attn.c_proj.weight"]).view(B, T, C)
        x = x + a
        h = F.layer_norm(x, (C,), sd[p + "ln_2.weight"], sd[p + "ln_2.bias"], eps)
        I = sd[p + "mlp.c_fc.weight"].shape[1]
        m = gelu_new(torch.addmm(sd[p + "mlp.c_fc.bias"], h.view(-1, C), sd[p + "mlp.c_fc.weight"]).view(B, T, I))
        m = torch.addmm(sd[p + "mlp.c_proj.bias"], m.view(-1, I), sd[p + "mlp.c_proj.weight"]).view(B, T, C)
        x = x + m
    x = F.layer_norm(x, (C,), sd["ln_f.weight"], sd["ln_f.bias"], eps)
    return x @ sd["wte.weight"].t()


def make_gpt2(g):
    cfg = {
        "activation_function": "gelu_new",
        "architectures": ["GPT2LMHeadModel"],
        "attn_pdrop": 0.1,
        "bos_token_id": 100,
        "embd_pdrop": 0.1,
        "eos_token_id": 100,
        "initializer_range": 0.02,
        "layer_norm_epsilon": 1e-05,
        "model_type": "gpt2",
        "n_ctx": 32,
        "n_embd": 32,
        "n_head": 4,
        "n_inner": None,
        "n_layer": 2,
        "n_positions": 32,
        "reorder_and_upcast_attn": False,
        "resid_pdrop": 0.1,
        "scale_attn_by_inverse_layer_idx": False,
        "scale_attn_weights": True,
        "summary_activation": None,
        "summary_first_dropout": 0.1,
        "summary_proj_to_labels": True,
        "summary_type": "cls_index",
        "summary_use_proj": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": 101,
    }
    C, V, P, L = cfg["n_embd"], cfg["vocab_size"], cfg["n_positions"], cfg["n_layer"]
    I = 4 * C
    sd = {"wte.weight": randn(g, V, C, std=0.5), "wpe.weight": randn(g, P, C, std=0.3)}
    for i in range(L):
        p = "h.%d." % i
        sd[p + "ln_1.weight"] = 1 + randn(g, C, std=0.1)
        sd[p + "ln_1.bias"] = randn(g, C, std=0.1)
        sd[p + "attn.c_attn.weight"] = randn(g, C, 3 * C, std=0.25)
        sd[p + "attn.c_attn.bias"] = randn(g, 3 * C, std=0.1)
        sd[p + "attn.c_proj.weight"] = randn(g, C, C, std=0.2)
        sd[p + "attn.c_proj.bias"] = randn(g, C, std=0.1)
        sd[p + "ln_2.weight"] = 1 + randn(g, C, std=0.1)
        sd[p + "ln_2.bias"] = randn(g, C, std=0.1)
        sd[p + "mlp.c_fc.weight"] = randn(g, C, I, std=0.2)
        sd[p + "mlp.c_fc.bias"] = randn(g, I, std=0.1)
        sd[p + "mlp.c_proj.weight"] = randn(g, I, C, std=0.1)
        sd[p + "mlp.c_proj.bias"] = randn(g, C, std=0.1)
    sd["ln_f.weight"] = 1 + randn(g, C, std=0.1)
    sd["ln_f.bias"] = randn(g, C, std=0.1)
    # the causal-mask buffers old GPT-2 checkpoints carry (not parameters)
    stored = dict(sd)
    for i in range(L):
        stored["h.%d.attn.bias" % i] = torch.tril(torch.ones(P, P)).view(1, 1, P, P)
    return cfg, sd, stored, gpt2_forward


# ---- Llama / Qwen2 (LlamaForCausalLM, eager attention) ----------------------------

def rms_norm(x, w, eps):
    xf = x.to(torch.float32)
    var = xf.pow(2).mean(-1, keepdim=True)
    return w * (xf * torch.rsqrt(var + eps)).to(x.dtype)


def llama3_inv_freq(inv_freq, rs):
    factor, low, high = rs["factor"], rs["low_freq_factor"], rs["high_freq_factor"]
    old = rs["original_max_position_embeddings"]
    low_wl, high_wl = old / low, old / high
    wavelen = 2 * math.pi / inv_freq
    inv_llama = torch.where(wavelen > low_wl, inv_freq / factor, inv_freq)
    smooth = (old / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * inv_llama / factor + smooth * inv_llama
    medium = ~(wavelen < high_wl) * ~(wavelen > low_wl)
    return torch.where(medium, smoothed, inv_llama)


def rotary(cfg, pos, D):
    base = cfg.get("rope_theta", 10000.0)
    inv_freq = 1.0 / (base ** (torch.arange(0, D, 2, dtype=torch.int64).float() / D))
    rs = cfg.get("rope_scaling")
    if rs is not None and rs.get("rope_type") == "llama3":
        inv_freq = llama3_inv_freq(inv_freq, rs)
    B = pos.shape[0]
    inv_e = inv_freq[None, :, None].float().expand(B, -1, 1)
    freqs = (inv_e.float() @ pos[:, None, :].float()).transpose(1, 2)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x):
    x1 = x[..., : x.shape[-1] // 2]
    x2 = x[..., x.shape[-1] // 2:]
    return torch.cat((-x2, x1), dim=-1)


def repeat_kv(x, n_rep):
    B, Hkv, T, D = x.shape
    if n_rep == 1:
        return x
    return x[:, :, None, :, :].expand(B, Hkv, n_rep, T, D).reshape(B, Hkv * n_rep, T, D)


def lin(x, sd, name):
    y = x @ sd[name + ".weight"].t()
    if name + ".bias" in sd:
        y = y + sd[name + ".bias"]
    return y


def llama_forward(cfg, sd, ids, mask=None, pos=None):
    B, T = ids.shape
    C, H, L = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_hidden_layers"]
    Hkv = cfg["num_key_value_heads"]
    D, eps = C // H, cfg["rms_norm_eps"]
    if pos is None:
        pos = torch.arange(T).unsqueeze(0).expand(B, T)
    cos, sin = rotary(cfg, pos, D)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    # _prepare_4d_causal_attention_mask_with_cache_position
    cm = torch.triu(torch.full((T, T), MIN), diagonal=1)[None, None].expand(B, 1, T, T).clone()
    if mask is not None:
        pad = (cm == 0) & (mask[:, None, None, :] == 0)
        cm = cm.masked_fill(pad, MIN)
    x = sd["model.embed_tokens.weight"][ids]
    for i in range(L):
        p = "model.layers.%d." % i
        h = rms_norm(x, sd[p + "input_layernorm.weight"], eps)
        q = lin(h, sd, p + "self_attn.q_proj").view(B, T, -1, D).transpose(1, 2)
        k = lin(h, sd, p + "self_attn.k_proj").view(B, T, -1, D).transpose(1, 2)
        v = lin(h, sd, p + "self_attn.v_proj").view(B, T, -1, D).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        k, v = repeat_kv(k, H // Hkv), repeat_kv(v, H // Hkv)
        w = torch.matmul(q, k.transpose(2, 3)) * D ** -0.5
        w = w + cm
        w = torch.softmax(w, dim=-1, dtype=torch.float32)
        a = torch.matmul(w, v).transpose(1, 2).reshape(B, T, -1)
        x = x + lin(a, sd, p + "self_attn.o_proj")
        h = rms_norm(x, sd[p + "post_attention_layernorm.weight"], eps)
        x = x + lin(F.silu(lin(h, sd, p + "mlp.gate_proj")) * lin(h, sd, p + "mlp.up_proj"), sd, p + "mlp.down_proj")
    x = rms_norm(x, sd["model.norm.weight"], eps)
    head = sd["model.embed_tokens.weight"] if cfg["tie_word_embeddings"] else sd["lm_head.weight"]
    return x @ head.t()


def make_llama_like(g, cfg, qkv_bias):
    C, V, L = cfg["hidden_size"], cfg["vocab_size"], cfg["num_hidden_layers"]
    H, Hkv, I = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["intermediate_size"]
    D = C // H
    sd = {"model.embed_tokens.weight": randn(g, V, C, std=0.5)}
    for i in range(L):
        p = "model.layers.%d." % i
        sd[p + "input_layernorm.weight"] = 1 + randn(g, C, std=0.1)
        for name, out in (("q_proj", H * D), ("k_proj", Hkv * D), ("v_proj", Hkv * D)):
            sd[p + "self_attn." + name + ".weight"] = randn(g, out, C, std=0.3)
            if qkv_bias:
                sd[p + "self_attn." + name + ".bias"] = randn(g, out, std=0.2)
        sd[p + "self_attn.o_proj.weight"] = randn(g, C, H * D, std=0.2)
        sd[p + "post_attention_layernorm.weight"] = 1 + randn(g, C, std=0.1)
        sd[p + "mlp.gate_proj.weight"] = randn(g, I, C, std=0.3)
        sd[p + "mlp.up_proj.weight"] = randn(g, I, C, std=0.3)
        sd[p + "mlp.down_proj.weight"] = randn(g, C, I, std=0.2)
    sd["model.norm.weight"] = 1 + randn(g, C, std=0.1)
    if not cfg["tie_word_embeddings"]:
        sd["lm_head.weight"] = randn(g, V, C, std=0.3)
    return cfg, sd, dict(sd), llama_forward


def make_llama(g):
    cfg = {
        "architectures": ["LlamaForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "max_position_embeddings": 64,
        "mlp_bias": False,
        "model_type": "llama",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8,
            "rope_type": "llama3",
        },
        "rope_theta": 10000.0,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "use_cache": True,
        "vocab_size": 101,
    }
    return make_llama_like(g, cfg, False)


def make_qwen2(g):
    cfg = {
        "architectures": ["Qwen2ForCausalLM"],
        "attention_dropout": 0.0,
        "bos_token_id": 100,
        "eos_token_id": 100,
        "hidden_act": "silu",
        "hidden_size": 32,
        "initializer_range": 0.02,
        "intermediate_size": 48,
        "max_position_embeddings": 128,
        "max_window_layers": 2,
        "model_type": "qwen2",
        "num_attention_heads": 4,
        "num_hidden_layers": 2,
        "num_key_value_heads": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": 1000000.0,
        "sliding_window": None,
        "tie_word_embeddings": True,
        "torch_dtype": "float32",
        "use_cache": True,
        "use_sliding_window": False,
        "vocab_size": 101,
    }
    return make_llama_like(g, cfg, True)


# ---- inputs and outputs --------------------------------------------------------------

def randn(g, *shape, std=1.0):
    return torch.randn(*shape, generator=g) * std


def cases(g, V):
    plain = torch.randint(0, V, (2, 7), generator=g)
    pad = 0
    padded = torch.full((3, 7), pad, dtype=torch.int64)
    mask = torch.zeros(3, 7, dtype=torch.int64)
    padded[0] = plain[0]
    mask[0] = 1
    padded[1, 2:] = plain[1, :5]  # the first 5 tokens of plain row 2, after 2 pads
    mask[1, 2:] = 1
    padded[2, 4:] = torch.randint(0, V, (3,), generator=g)
    mask[2, 4:] = 1
    return plain, padded, mask


def write(name, make, seed):
    g = torch.Generator().manual_seed(seed)
    cfg, sd, stored, forward = make(g)
    out = os.path.join(ROOT, name)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2, sort_keys=True)
        f.write("\n")
    save_safetensors(os.path.join(out, "model.safetensors"), stored, {"format": "pt"})
    plain, padded, mask = cases(g, cfg["vocab_size"])
    pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
    with torch.no_grad():
        lp = forward(cfg, sd, plain)
        lpad = forward(cfg, sd, padded, mask, pos)
    # a check of the reference itself: real positions of a left-padded row
    # give the logits of the unpadded row
    assert torch.allclose(lpad[1, 2:], lp[1, :5], atol=1e-5), name
    assert torch.allclose(lpad[0], lp[0], atol=1e-5), name
    with open(os.path.join(out, "inputs.json"), "w") as f:
        json.dump({
            "plain": {"input_ids": plain.tolist()},
            "padded": {"input_ids": padded.tolist(), "attention_mask": mask.tolist()},
        }, f, indent=1)
        f.write("\n")
    save_safetensors(os.path.join(out, "expected.safetensors"),
                     {"plain.logits": lp, "padded.logits": lpad}, {"format": "pt"})
    size = os.path.getsize(os.path.join(out, "model.safetensors"))
    print("%s: %d parameters, model.safetensors %d bytes" % (name, sum(t.numel() for t in sd.values()), size))


def main():
    torch.set_num_threads(1)
    write("gpt2", make_gpt2, 1)
    write("llama", make_llama, 2)
    write("qwen2", make_qwen2, 3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
