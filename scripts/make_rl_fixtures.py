#!/usr/bin/python3
"""make_rl_fixtures.py — reference values for the RL contracts of issue 6
(recipes/ppo.lua, grpo.lua, rloo.lua, fine_grained.lua), checked by
tests/lua/rl_contracts_spec.lua.

    /usr/bin/python3 scripts/make_rl_fixtures.py   # writes tests/fixtures/rl/contracts.json

Inputs are hand-made (B = 3 or 4 rows, T = 5 to 7, right-padded rows of
different lengths, a row with one real token, non-zero garbage in the padding
where the contract says padding is ignored). Every input is rounded to float32
first, so the engine's float32 tensors hold exactly these numbers; every
expected output is then computed in float64 with plain loops straight from the
contract's formula (no vectorised code, no engine code). The PPO loss's
gradients are worked out by hand and cross-checked here with torch float64
autograd. Value and ratio cases are kept clear of the clip boundaries and of
near-ties (asserted below), so float32 and float64 pick the same branch.
It does not test anything itself; run it again only if the cases change.
"""
import math
import os
import struct

import torch


def f32(x):
    return struct.unpack("f", struct.pack("f", float(x)))[0]


def f32s(rows):
    if isinstance(rows, (list, tuple)):
        return [f32s(r) for r in rows]
    return f32(rows)


def mask_of(lengths, T):
    return [[1 if t < n else 0 for t in range(T)] for n in lengths]


def last_real(mask_row):
    last = -1
    for t, m in enumerate(mask_row):
        if m:
            last = t
    return last


# ---------------------------------------------------------------- kl_rewards
def kl_rewards(scores, logprobs, ref_logprobs, mask, kl_coef):
    out = []
    for b, row in enumerate(mask):
        last = last_real(row)
        r = []
        for t, m in enumerate(row):
            if not m:
                r.append(0.0)
                continue
            v = -kl_coef * (logprobs[b][t] - ref_logprobs[b][t])
            if t == last:
                v += scores[b]
            r.append(v)
        out.append(r)
    return out


# ----------------------------------------------------------------------- gae
def gae(rewards, values, mask, gamma, lam):
    adv, ret = [], []
    for b, row in enumerate(mask):
        T = len(row)
        last = last_real(row)
        A = [0.0] * T
        a_next = 0.0
        for t in range(last, -1, -1):
            v_next = values[b][t + 1] if t + 1 <= last else 0.0
            delta = rewards[b][t] + gamma * v_next - values[b][t]
            a_next = delta + gamma * lam * a_next
            A[t] = a_next
        adv.append([A[t] if row[t] else 0.0 for t in range(T)])
        ret.append([A[t] + values[b][t] if row[t] else 0.0 for t in range(T)])
    return adv, ret


# -------------------------------------------------------------------- whiten
def whiten(x, mask):
    n, s = 0, 0.0
    for b, row in enumerate(mask):
        for t, m in enumerate(row):
            if m:
                n += 1
                s += x[b][t]
    mean = s / n
    ss = 0.0
    for b, row in enumerate(mask):
        for t, m in enumerate(row):
            if m:
                ss += (x[b][t] - mean) ** 2
    var = ss / (n - 1)
    return [[(x[b][t] - mean) / math.sqrt(var + 1e-8) if m else 0.0 for t, m in enumerate(row)]
            for b, row in enumerate(mask)]


# ------------------------------------------------------------------ PPO loss
def clip(x, lo, hi):
    return min(max(x, lo), hi)


MARGIN = 1e-3  # how far every case stays from a clip boundary or a tie


def ppo_loss(batch, cfg):
    lp, olp, A = batch["logprobs"], batch["old_logprobs"], batch["advantages"]
    V, OV, R, mask = batch["values"], batch["old_values"], batch["returns"], batch["mask"]
    eps, eps_v, c_v = cfg["cliprange"], cfg["cliprange_value"], cfg["vf_coef"]
    n = sum(sum(row) for row in mask)
    pg = vf = clipfrac = vf_clipfrac = approxkl = 0.0
    g_lp = [[0.0] * len(row) for row in mask]
    g_v = [[0.0] * len(row) for row in mask]
    for b, row in enumerate(mask):
        for t, m in enumerate(row):
            if not m:
                continue
            d = lp[b][t] - olp[b][t]
            ratio = math.exp(d)
            assert min(abs(ratio - (1 - eps)), abs(ratio - (1 + eps))) > MARGIN
            l1 = -A[b][t] * ratio
            l2 = -A[b][t] * clip(ratio, 1 - eps, 1 + eps)
            assert l1 == l2 or abs(l1 - l2) > MARGIN
            pg += max(l1, l2)
            clipfrac += 1.0 if l2 > l1 else 0.0
            approxkl += d * d
            # d max(l1, l2) / d lp: l1's derivative -A*ratio where l1 is taken
            # (at a tie the clamp is inactive and both derivatives agree)
            if l1 >= l2:
                g_lp[b][t] = -A[b][t] * ratio / n
            dv = V[b][t] - OV[b][t]
            assert abs(abs(dv) - eps_v) > MARGIN
            vclip = OV[b][t] + clip(dv, -eps_v, eps_v)
            s1 = (V[b][t] - R[b][t]) ** 2
            s2 = (vclip - R[b][t]) ** 2
            assert s1 == s2 or abs(s1 - s2) > MARGIN
            vf += max(s1, s2)
            vf_clipfrac += 1.0 if s2 > s1 else 0.0
            # d s1/dV = 2 (V - R); s2 depends on V only inside the clip range,
            # where vclip == V and s2 == s1
            if s1 >= s2:
                g_v[b][t] = c_v * 0.5 * 2.0 * (V[b][t] - R[b][t]) / n
    pg /= n
    vf = 0.5 * vf / n
    metrics = {"pg_loss": pg, "vf_loss": vf, "clipfrac": clipfrac / n,
               "vf_clipfrac": vf_clipfrac / n, "approxkl": 0.5 * approxkl / n}
    return pg + c_v * vf, metrics, g_lp, g_v


def ppo_loss_torch(batch, cfg):
    """the same loss written with torch float64 tensors, for its gradients"""
    t = {k: torch.tensor(v, dtype=torch.float64) for k, v in batch.items()}
    lp = t["logprobs"].clone().requires_grad_(True)
    V = t["values"].clone().requires_grad_(True)
    m = t["mask"]
    eps, eps_v = cfg["cliprange"], cfg["cliprange_value"]
    ratio = torch.exp((lp - t["old_logprobs"]) * m)
    pg = torch.maximum(-t["advantages"] * ratio, -t["advantages"] * torch.clamp(ratio, 1 - eps, 1 + eps))
    vclip = t["old_values"] + torch.clamp(V - t["old_values"], -eps_v, eps_v)
    vf = torch.maximum((V - t["returns"]) ** 2, (vclip - t["returns"]) ** 2)
    loss = (pg * m).sum() / m.sum() + cfg["vf_coef"] * 0.5 * (vf * m).sum() / m.sum()
    loss.backward()
    return loss.item(), lp.grad.tolist(), V.grad.tolist()


# --------------------------------------------------------------- adaptive KL
def adaptive_kl(init, target, horizon, updates):
    value, out = init, []
    for kl, n_steps in updates:
        if target is not None:
            e = clip(kl / target - 1, -0.2, 0.2)
            value = value * (1 + e * n_steps / horizon)
        out.append(value)
    return out


# ---------------------------------------------------------------- GRPO, RLOO
def grpo_advantages(rewards):
    out = []
    for g in rewards:
        G = len(g)
        mean = sum(g) / G
        std = math.sqrt(sum((r - mean) ** 2 for r in g) / (G - 1))
        out.append([(r - mean) / (std + 1e-4) for r in g])
    return out


def rloo_advantages(rewards):
    out = []
    for g in rewards:
        G = len(g)
        row = []
        for i, r in enumerate(g):
            others = sum(g[j] for j in range(G) if j != i)
            row.append(r - others / (G - 1))
        out.append(row)
    return out


# -------------------------------------------------------- fine-grained RLHF
def dense_rewards(segments, weights, T):
    out = []
    for segs in segments:
        row = [0.0] * T
        for s in segs:
            total = 0.0
            for aspect, score in s["scores"].items():
                total += weights.get(aspect, 0.0) * score
            row[s["last"] - 1] += total
        out.append(row)
    return out


# ------------------------------------------------------------------- inputs
def cases():
    fx = {}

    # kl_rewards: B = 3, T = 5, lengths 5, 3, 1; garbage in the padding
    mask = mask_of([5, 3, 1], 5)
    scores = f32s([1.5, -0.75, 2.25])
    lp = f32s([[-1.2, -0.35, -2.1, -0.8, -1.55],
               [-0.4, -2.7, -1.05, 0.9, -4.0],
               [-3.0, 1.7, -0.6, 2.2, -1.1]])
    ref = f32s([[-1.0, -0.9, -2.15, -0.2, -1.7],
                [-0.95, -2.2, -1.4, -3.0, 0.5],
                [-2.4, -0.8, 1.9, -0.3, 0.6]])
    fx["kl_rewards"] = []
    for coef in (0.2, 0.05):
        kc = f32(coef)
        fx["kl_rewards"].append({"scores": scores, "logprobs": lp, "ref_logprobs": ref, "mask": mask,
                                 "kl_coef": kc, "rewards": kl_rewards(scores, lp, ref, mask, kc)})

    # gae: B = 4, T = 7, lengths 7, 4, 1, 6
    lengths = [7, 4, 1, 6]
    mask = mask_of(lengths, 7)
    rew = [[0.1, -0.2, 0.05, 0.0, -0.15, 0.3, 1.25],
           [-0.05, 0.2, -0.1, -0.8],
           [2.0],
           [0.0, 0.1, -0.3, 0.25, -0.05, -1.5]]
    val = [[0.5, 0.75, -0.25, 0.4, 0.9, 1.1, 0.6],
           [-0.3, 0.15, 0.2, -0.45],
           [0.8],
           [1.0, 0.35, -0.6, 0.05, 0.7, -0.2]]
    garbage_r = [5.0, -3.0, 7.5, -2.25, 4.0, -6.0]
    garbage_v = [-4.5, 3.25, 9.0, -1.75, 2.5, 6.0]

    def padded(rows, fill):
        return f32s([r + (fill[:7 - len(r)] if fill else [0.0] * (7 - len(r))) for r in rows])

    fx["gae"] = []
    for name, r, v, gamma, lam in (
            ("zeros in the padding", padded(rew, None), padded(val, None), 0.99, 0.95),
            ("garbage in the padding", padded(rew, garbage_r), padded(val, garbage_v), 0.99, 0.95),
            ("gamma 1, lambda 0.9", padded(rew, None), padded(val, None), 1.0, 0.9),
            ("gamma 0.9, lambda 0", padded(rew, garbage_r), padded(val, garbage_v), 0.9, 0.0)):
        g, l = f32(gamma), f32(lam)
        adv, ret = gae(r, v, mask, g, l)
        fx["gae"].append({"name": name, "rewards": r, "values": v, "mask": mask, "gamma": g, "lam": l,
                          "advantages": adv, "returns": ret})

    # whiten: B = 3, T = 6, lengths 6, 2, 1 (padding 100s would move the mean);
    # and a full batch
    mask = mask_of([6, 2, 1], 6)
    x = f32s([[0.3, -1.2, 2.5, 0.05, -0.7, 1.1],
              [-2.0, 0.8, 100.0, 100.0, -100.0, 100.0],
              [1.6, 100.0, -100.0, 100.0, 100.0, 100.0]])
    full = mask_of([5, 5, 5], 5)
    y = f32s([[0.12, -0.5, 0.33, 1.9, -2.4],
              [0.0, 0.75, -0.05, 1.2, 0.6],
              [-1.1, 2.2, 0.4, -0.3, 0.9]])
    fx["whiten"] = [{"x": x, "mask": mask, "out": whiten(x, mask)},
                    {"x": y, "mask": full, "out": whiten(y, full)}]

    # PPO loss: B = 4, T = 6, lengths 6, 4, 1, 5. Log-ratios put ratios inside
    # the clip range, above it and below it, with positive, negative and zero
    # advantages; values, old values and returns are multiples of 1/16 so that
    # V_clip == V exactly (in float32 too) inside the value clip range. The
    # padding holds garbage.
    lp = [[-1.2, -0.35, -2.1, -0.8, -1.55, -0.05],
          [-0.4, -2.7, -1.05, -0.95, 0.3, -0.7],
          [-3.0, 0.6, -1.4, 2.0, -0.2, 1.3],
          [-0.1, -0.7, -1.9, -0.3, -2.6, 0.45]]
    olp = [[-1.0, -0.9, -2.15, -0.2, -1.5, -0.6],
           [-0.95, -2.2, -1.1, -0.65, -1.0, 2.0],
           [-2.4, -1.5, 0.9, -0.25, 1.1, -2.0],
           [-0.25, -0.5, -1.6, -0.45, -2.1, -1.3]]
    adv = [[0.7, -1.3, 2.1, -0.4, 0.0, 1.6],
           [0.9, 1.1, -0.25, -2.2, 5.0, -3.0],
           [1.5, -4.0, 2.5, 6.0, -7.0, 3.5],
           [-0.6, 0.35, -1.7, 1.2, 0.8, -9.0]]
    ov = [[0.5, -0.25, 1.0, 0.0, 2.0, -1.0],
          [0.0, 0.75, -0.5, 1.25, 3.0, -2.5],
          [0.25, 4.0, -3.0, 1.5, -2.0, 0.5],
          [-0.25, 0.5, 0.125, 1.0, -0.75, 6.0]]
    v = [[0.5625, 0.25, 1.375, -0.5, 1.875, -1.5],
         [0.0625, 1.5, -0.625, 0.5, -2.0, 1.0],
         [0.75, -3.0, 2.5, 0.25, 4.5, -1.0],
         [-0.1875, 0.5, 0.625, 0.875, -0.875, -5.0]]
    R = [[1.0, 1.5, 0.75, -1.25, 2.5, -0.75],
         [-0.25, 2.0, 0.0, 1.0, 7.0, -4.0],
         [1.25, 2.0, -1.5, 3.0, 0.5, -6.0],
         [0.5, 0.25, -0.5, 1.0, -0.375, 8.0]]
    batch = {"logprobs": f32s(lp), "old_logprobs": f32s(olp), "advantages": f32s(adv),
             "values": f32s(v), "old_values": f32s(ov), "returns": f32s(R),
             "mask": mask_of([6, 4, 1, 5], 6)}
    fx["loss"] = []
    for cfg in ({"cliprange": 0.2, "cliprange_value": 0.2, "vf_coef": 0.1},
                {"cliprange": 0.1, "cliprange_value": 0.3, "vf_coef": 0.5}):
        cfg = {k: f32(x) for k, x in cfg.items()}
        loss, metrics, g_lp, g_v = ppo_loss(batch, cfg)
        t_loss, t_glp, t_gv = ppo_loss_torch(batch, cfg)
        assert abs(t_loss - loss) < 1e-12, (t_loss, loss)
        for a, b in ((g_lp, t_glp), (g_v, t_gv)):
            for ra, rb in zip(a, b):
                for xa, xb in zip(ra, rb):
                    assert abs(xa - xb) < 1e-12, (xa, xb)
        fx["loss"].append({"batch": batch, "cfg": cfg, "loss": loss, "metrics": metrics,
                           "grad_logprobs": g_lp, "grad_values": g_v})
    # the cases must exercise every branch
    m0 = fx["loss"][0]["metrics"]
    assert 0 < m0["clipfrac"] < 1 and 0 < m0["vf_clipfrac"] < 1, m0

    # adaptive KL: target 6, horizon 10000; KLs far below, near, at, above
    # and far above the target; then a fixed coefficient (no target)
    upd = [[1.0, 256], [5.7, 512], [6.0, 256], [6.6, 128], [9.0, 1024], [30.0, 64]]
    fx["adaptive_kl"] = [
        {"init": 0.2, "target": 6.0, "horizon": 10000, "updates": upd,
         "values": adaptive_kl(0.2, 6.0, 10000, upd)},
        {"init": 0.05, "target": 0.1, "horizon": 500, "updates": [[0.09, 100], [0.5, 50], [0.0, 200], [0.1, 10]],
         "values": adaptive_kl(0.05, 0.1, 500, [[0.09, 100], [0.5, 50], [0.0, 200], [0.1, 10]])},
        {"init": 0.05, "updates": upd, "values": adaptive_kl(0.05, None, None, upd)},
    ]

    # GRPO (P = 3, G = 4) and RLOO (P = 4, G = 3), each with an all-equal group
    gr = f32s([[1.0, 0.0, 0.5, 0.25], [1.0, 1.0, 1.0, 1.0], [-2.5, 0.75, -0.125, 3.0]])
    fx["grpo"] = [{"rewards": gr, "advantages": grpo_advantages(gr)},
                  {"rewards": f32s([[0.3, -1.7], [2.2, 2.9]]),
                   "advantages": grpo_advantages(f32s([[0.3, -1.7], [2.2, 2.9]]))}]
    rl = f32s([[1.0, 0.0, 0.5], [0.75, 0.75, 0.75], [-2.5, 3.0, 0.25], [2.0, -1.0, 0.6]])
    fx["rloo"] = [{"rewards": rl, "advantages": rloo_advantages(rl)},
                  {"rewards": gr, "advantages": rloo_advantages(gr)}]

    # fine-grained dense rewards: B = 4, T = 7. Row 1 has a sentence and the
    # sequence-level score ending on the same token and an aspect ("style")
    # with no weight; row 3 has one real token; row 4 has no segments.
    weights = {"relevance": 0.5, "factuality": 1.0, "completeness": 0.3}
    segments = [
        [{"last": 3, "scores": {"relevance": 1.0, "factuality": -1.0}},
         {"last": 7, "scores": {"relevance": -0.5, "factuality": 1.0, "style": 2.0}},
         {"last": 7, "scores": {"completeness": 0.8}}],
        [{"last": 2, "scores": {"factuality": 0.5}},
         {"last": 4, "scores": {"relevance": 1.0, "factuality": 1.0}},
         {"last": 5, "scores": {"completeness": -0.3}}],
        [{"last": 1, "scores": {"relevance": 0.25}},
         {"last": 1, "scores": {"completeness": 1.0}}],
        [],
    ]
    fx["dense_rewards"] = [{"segments": segments, "weights": weights, "T": 7,
                            "rewards": dense_rewards(segments, weights, 7)}]
    return fx


# ------------------------------------------------------------------- output
def dump(v):
    """JSON with every float at 17 significant digits (ints stay ints)"""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        assert math.isfinite(v)
        s = "%.17g" % v
        if not any(c in s for c in ".en"):
            s += ".0"
        return s
    if isinstance(v, str):
        assert '"' not in v and "\\" not in v
        return '"' + v + '"'
    if isinstance(v, dict):
        return "{" + ",".join(dump(k) + ":" + dump(v[k]) for k in sorted(v)) + "}"
    if isinstance(v, (list, tuple)):
        return "[" + ",".join(dump(x) for x in v) + "]"
    raise TypeError(type(v))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    out_dir = os.path.join(root, "tests", "fixtures", "rl")
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "contracts.json")
    text = dump(cases()) + "\n"
    with open(path, "w") as f:
        f.write(text)
    print("wrote %s (%d bytes)" % (path, len(text)))


if __name__ == "__main__":
    main()
