#!/usr/bin/python3
"""make_safetensors_fixtures.py — writes tests/fixtures/safetensors/*, the
reference files the safetensors tests read (run once, commit the output):

    /usr/bin/python3 scripts/make_safetensors_fixtures.py

The `safetensors` Python package is not installed here, so the files are
written by hand in the format (8-byte little-endian header length, compact
JSON header padded with spaces to a multiple of 8, then the data) with the
reference writer's layout (tensors by descending dtype, then by name), and
every file is read back with torch.frombuffer and compared bit for bit with
the tensors it was made from, proving the writer.

Files:
  dtypes.safetensors          one tensor per dtype: F32, F64, F16 and BF16
                              (special and random bit patterns), I64 and U8
                              (listed, not loadable), a 0-dim and an empty one
  dtypes_expected.safetensors what torch computes from them, as F32: the
                              widened F16/BF16 values and the rounded F64 ones;
                              and the writer's conversions: `src` (F32) and
                              torch's src.to(bfloat16) and src.to(float16)
  layout.safetensors          F32 and F64 tensors with metadata, laid out as
                              the reference writer does: the engine's writer
                              must reproduce it byte for byte
  sharded/                    a two-shard checkpoint with its
                              model.safetensors.index.json, as Hugging Face
                              writes it (values k/8 for k = 0, 1, 2, ...)

It does not run at test time; torch is never a runtime dependency.
"""
import json
import os
import struct

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "safetensors")

DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16",
    torch.int64: "I64", torch.uint8: "U8",
}
# the reference library's dtype order (its layout sorts by it, descending)
ORDER = ["BOOL", "F4", "F6_E2M3", "F6_E3M2", "U8", "I8", "F8_E5M2", "F8_E4M3", "F8_E8M0", "I16", "U16",
         "F16", "BF16", "I32", "U32", "F32", "C64", "F64", "I64", "U64"]
# integer views with the same width, for raw bytes and bit comparisons
INT_VIEW = {torch.float64: torch.int64, torch.float32: torch.int32, torch.bfloat16: torch.int16,
            torch.float16: torch.int16, torch.int64: torch.int64, torch.uint8: torch.uint8}


def raw_bytes(t):
    return t.contiguous().view(INT_VIEW[t.dtype]).numpy().tobytes()


def write_safetensors(path, tensors, metadata=None):
    items = sorted(tensors.items(), key=lambda kv: kv[0])
    items.sort(key=lambda kv: ORDER.index(DTYPE_NAMES[kv[1].dtype]), reverse=True)  # stable: names stay sorted
    header, data, offset = {}, [], 0
    if metadata:
        header["__metadata__"] = dict(sorted(metadata.items()))
    for name, t in items:
        b = raw_bytes(t)
        header[name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                        "data_offsets": [offset, offset + len(b)]}
        data.append(b)
        offset += len(b)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in data:
            f.write(b)


FROM_NAME = {v: k for k, v in DTYPE_NAMES.items()}


def read_safetensors(path):
    """The file's tensors via torch.frombuffer, after the format's checks."""
    with open(path, "rb") as f:
        buf = f.read()
    (n,) = struct.unpack("<Q", buf[:8])
    assert n % 8 == 0 and 8 + n <= len(buf)
    header = json.loads(buf[8:8 + n].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    data = buf[8 + n:]
    out, at = {}, 0
    for name, e in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"]):
        b, end = e["data_offsets"]
        assert b == at, (name, b, at)
        dt = FROM_NAME[e["dtype"]]
        numel = 1
        for s in e["shape"]:
            numel *= s
        assert end - b == numel * torch.tensor([], dtype=dt).element_size()
        chunk = bytearray(data[b:end])
        t = torch.frombuffer(chunk, dtype=INT_VIEW[dt]) if numel else torch.empty(0, dtype=INT_VIEW[dt])
        out[name] = t.view(dt).reshape(e["shape"])
        at = end
    assert at == len(data)
    return out, meta


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(INT_VIEW[a.dtype]),
                                                                       b.contiguous().view(INT_VIEW[b.dtype]))


def save_checked(path, tensors, metadata=None):
    write_safetensors(path, tensors, metadata)
    back, meta = read_safetensors(path)
    assert sorted(back) == sorted(tensors), path
    for k, t in tensors.items():
        assert same_bits(back[k], t), (path, k)
    assert meta == (dict(metadata) if metadata else None)
    print("wrote", os.path.relpath(path), f"({os.path.getsize(path)} bytes)")


def from_bits16(bits, dtype):
    return torch.tensor(bits, dtype=torch.int32).to(torch.int16).view(dtype)


def main():
    os.makedirs(os.path.join(ROOT, "sharded"), exist_ok=True)
    g = torch.Generator().manual_seed(1234)

    # F16: zeros, subnormals, the smallest and largest normals, one, infinities,
    # NaNs (quiet, signalling, negative), then random bit patterns
    f16_special = [0x0000, 0x8000, 0x0001, 0x8001, 0x03FF, 0x0400, 0x3C00, 0xBC00, 0x3555, 0x7BFF, 0xFBFF,
                   0x7C00, 0xFC00, 0x7E00, 0xFE00, 0x7C01, 0x7D23]
    f16_bits = f16_special + torch.randint(0, 1 << 16, (4 * 16 - len(f16_special),), generator=g).tolist()
    f16 = from_bits16(f16_bits, torch.float16).reshape(4, 16)
    bf16_special = [0x0000, 0x8000, 0x0001, 0x007F, 0x0080, 0x3F80, 0xBF80, 0x4049, 0x7F7F, 0xFF7F, 0x7F80,
                    0xFF80, 0x7FC0, 0xFFC0, 0x7F81]
    bf16_bits = bf16_special + torch.randint(0, 1 << 16, (3 * 16 - len(bf16_special),), generator=g).tolist()
    bf16 = from_bits16(bf16_bits, torch.bfloat16).reshape(3, 16)
    f64 = torch.tensor([0.1, -2.5, 1e300, -1e300, 1e-320, 3.141592653589793, 1.0000000596046448, 0.0, -0.0,
                        float("inf"), 16777217.0, 2.0 ** -149], dtype=torch.float64).reshape(2, 6)
    f32 = torch.tensor([[1.5, -0.0, 3.4028234663852886e38], [1e-45, float("-inf"), -7.25]], dtype=torch.float32)
    tensors = {
        "f32": f32, "f64": f64, "f16": f16, "bf16": bf16,
        "i64": torch.tensor([1, -2, 1 << 40], dtype=torch.int64),
        "u8": torch.tensor([0, 7, 255], dtype=torch.uint8),
        "scalar": torch.tensor(42.5, dtype=torch.float32),
        "empty": torch.zeros(0, 3, dtype=torch.float32),
    }
    save_checked(os.path.join(ROOT, "dtypes.safetensors"), tensors,
                 {"format": "pt", "made_by": "scripts/make_safetensors_fixtures.py"})

    # the writer's conversions: ties (to even), overflow, subnormals, NaN, random
    src_vals = [0.0, -0.0, 1.0, 1.0 + 2.0 ** -8, 1.0 + 3 * 2.0 ** -8, 1.0 + 2.0 ** -11, 1.0 + 3 * 2.0 ** -11,
                1.0 + 2.0 ** -11 + 2.0 ** -20, 65504.0, 65519.0, 65520.0, 1e5, -1e5, 3.3895313892515355e38,
                3.4028234663852886e38, 2.0 ** -14, 2.0 ** -24, 2.0 ** -25, 3 * 2.0 ** -26, 2.0 ** -25 + 2.0 ** -40,
                1.5 * 2.0 ** -24, 2.5 * 2.0 ** -24, 2.0 ** -133, 1e-45, float("inf"), float("-inf"), float("nan")]
    rnd = (torch.randn(64, generator=g) * torch.exp(torch.randn(64, generator=g) * 8)).tolist()
    src = torch.tensor(src_vals + rnd, dtype=torch.float32)
    expected = {
        "f16": f16.float(), "bf16": bf16.float(), "f64": f64.float(),
        "src": src, "src_bf16": src.to(torch.bfloat16), "src_f16": src.to(torch.float16),
    }
    save_checked(os.path.join(ROOT, "dtypes_expected.safetensors"), expected)

    layout = {
        "b": torch.arange(6, dtype=torch.float32).reshape(2, 3) / 4,
        "a": torch.tensor([0.1, 0.2, 0.3], dtype=torch.float64),
        "c.weight": torch.tensor([[1e-3]], dtype=torch.float32),
        "a.bias": torch.tensor([-1.0, 2.0, -3.0, 4.0, -5.0], dtype=torch.float32),
        "z": torch.tensor(7.0, dtype=torch.float64),
    }
    save_checked(os.path.join(ROOT, "layout.safetensors"), layout, {"format": "pt", "step": "10"})

    # a sharded checkpoint as Hugging Face writes it
    k = [0]

    def seq(*shape):
        n = 1
        for s in shape:
            n *= s
        t = (torch.arange(k[0], k[0] + n, dtype=torch.float32) / 8).reshape(*shape)
        k[0] += n
        return t

    shard1 = {"wte.weight": seq(5, 4), "wpe.weight": seq(3, 4)}
    shard2 = {"h.0.ln_1.weight": seq(4), "h.0.ln_1.bias": seq(4), "ln_f.weight": seq(4)}
    names = {}
    for i, shard in enumerate([shard1, shard2], 1):
        file = f"model-{i:05d}-of-00002.safetensors"
        save_checked(os.path.join(ROOT, "sharded", file), shard, {"format": "pt"})
        names.update({n: file for n in shard})
    total = sum(t.numel() * 4 for s in (shard1, shard2) for t in s.values())
    index = {"metadata": {"total_size": total}, "weight_map": names}
    with open(os.path.join(ROOT, "sharded", "model.safetensors.index.json"), "w") as f:
        f.write(json.dumps(index, indent=2, sort_keys=True) + "\n")
    print("wrote sharded/model.safetensors.index.json")


if __name__ == "__main__":
    main()
