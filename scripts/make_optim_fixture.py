#!/usr/bin/python3
"""make_optim_fixture.py — reference values for the optimizer tests
(tests/c/test_optim.c, tests/lua/optim_spec.lua), computed by PyTorch.

    /usr/bin/python3 scripts/make_optim_fixture.py   # writes tests/fixtures/optim.json

What it records: three steps of torch.optim.AdamW (two parameter groups:
a decayed 2-D weight, an undecayed bias and norm weight), the same with
torch.nn.utils.clip_grad_norm_ before each step, three steps of torch.optim.SGD
(momentum with dampening and weight decay; nesterov; plain), and the learning
rates torch.optim.lr_scheduler.LambdaLR gives with transformers' schedule
lambdas (copied below from transformers/optimization.py, as transformers is
not installed here), read before each optimizer step as a trainer sees them.
Every number is a float32 value written exactly (or a double for the lrs).
It does not test anything itself; run it again only if the cases change.
"""
import json
import math
import os

import torch

NAMES = ["w", "b", "ln.weight"]
SHAPES = {"w": [3, 4], "b": [4], "ln.weight": [4]}
DECAYED = {"w"}


def flat(t):
    return [float(x) for x in t.detach().reshape(-1).tolist()]


def make_case(seed, grad_scale):
    g = torch.Generator().manual_seed(seed)
    init = {n: torch.randn(SHAPES[n], generator=g) for n in NAMES}
    grads = [{n: torch.randn(SHAPES[n], generator=g) * grad_scale for n in NAMES} for _ in range(3)]
    # one tiny and one zero gradient element, so eps and the zero case matter
    grads[1]["b"][0] = 1e-9
    grads[2]["ln.weight"][1] = 0.0
    return init, grads


def run(make_opt, init, grads, clip=None):
    params = {n: init[n].clone().requires_grad_(True) for n in NAMES}
    opt = make_opt(params)
    after, norms = [], []
    for k in range(3):
        for n in NAMES:
            params[n].grad = grads[k][n].clone()
        if clip is not None:
            norms.append(float(torch.nn.utils.clip_grad_norm_([params[n] for n in NAMES], clip)))
        opt.step()
        after.append({n: flat(params[n]) for n in NAMES})
    state = {}
    for key in ("exp_avg", "exp_avg_sq", "momentum_buffer"):
        if key in opt.state[params["w"]] and opt.state[params["w"]][key] is not None:
            state[key] = {n: flat(opt.state[params[n]][key]) for n in NAMES}
    return after, norms, state


def groups(params, wd):
    return [
        {"params": [params[n] for n in NAMES if n in DECAYED], "weight_decay": wd},
        {"params": [params[n] for n in NAMES if n not in DECAYED], "weight_decay": 0.0},
    ]


def case_json(init, grads, options, result):
    after, norms, state = result
    out = {
        "names": NAMES,
        "shapes": SHAPES,
        "decayed": sorted(DECAYED),
        "options": options,
        "init": {n: flat(init[n]) for n in NAMES},
        "grads": [{n: flat(g[n]) for n in NAMES} for g in grads],
        "after": after,
        "state": state,  # the moments after the last step
    }
    if norms:
        out["norms"] = norms
    return out


# ---- transformers' lambdas (transformers/optimization.py) -------------------
def constant_with_warmup(step, *, num_warmup_steps):
    if step < num_warmup_steps:
        return float(step) / float(max(1.0, num_warmup_steps))
    return 1.0


def linear_with_warmup(step, *, num_warmup_steps, num_training_steps):
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    return max(0.0, float(num_training_steps - step) / float(max(1, num_training_steps - num_warmup_steps)))


def cosine_with_warmup(step, *, num_warmup_steps, num_training_steps, num_cycles=0.5):
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress)))


def cosine_with_min_lr(step, *, num_warmup_steps, num_training_steps, num_cycles=0.5, min_lr_rate=0.0):
    if step < num_warmup_steps:
        return float(step) / float(max(1, num_warmup_steps))
    progress = float(step - num_warmup_steps) / float(max(1, num_training_steps - num_warmup_steps))
    factor = 0.5 * (1.0 + math.cos(math.pi * float(num_cycles) * 2.0 * progress))
    factor = factor * (1 - min_lr_rate) + min_lr_rate
    return max(0, factor)


def lrs(lr, lam, n):
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    out = []
    for _ in range(n):
        out.append(opt.param_groups[0]["lr"])  # the lr of the coming update
        p.grad = torch.zeros(1)
        opt.step()
        sched.step()
    return out


def main():
    torch.set_num_threads(1)
    fx = {"torch_version": torch.__version__}

    init, grads = make_case(1, 1.0)
    o = {"lr": 0.01, "betas": [0.9, 0.95], "eps": 1e-6, "weight_decay": 0.1}
    r = run(lambda p: torch.optim.AdamW(groups(p, o["weight_decay"]), lr=o["lr"], betas=tuple(o["betas"]),
                                        eps=o["eps"], foreach=False), init, grads)
    fx["adamw"] = case_json(init, grads, o, r)

    init, grads = make_case(2, 3.0)
    o = {"lr": 0.001, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01, "max_norm": 1.0}
    r = run(lambda p: torch.optim.AdamW(groups(p, o["weight_decay"]), lr=o["lr"], foreach=False),
            init, grads, clip=o["max_norm"])
    fx["adamw_clip"] = case_json(init, grads, o, r)

    init, grads = make_case(3, 1.0)
    for key, o in [("sgd_momentum", {"lr": 0.1, "momentum": 0.9, "dampening": 0.1, "nesterov": False,
                                     "weight_decay": 0.01}),
                   ("sgd_nesterov", {"lr": 0.05, "momentum": 0.8, "dampening": 0.0, "nesterov": True,
                                     "weight_decay": 0.02}),
                   ("sgd_plain", {"lr": 0.1, "momentum": 0.0, "dampening": 0.0, "nesterov": False,
                                  "weight_decay": 0.0})]:
        r = run(lambda p: torch.optim.SGD(groups(p, o["weight_decay"]), lr=o["lr"], momentum=o["momentum"],
                                          dampening=o["dampening"], nesterov=o["nesterov"], foreach=False),
                init, grads)
        fx[key] = case_json(init, grads, o, r)

    fx["schedules"] = [
        {"kind": "constant", "lr": 0.5, "warmup_steps": 4, "total_steps": 10,
         "lrs": lrs(0.5, lambda s: constant_with_warmup(s, num_warmup_steps=4), 8)},
        {"kind": "linear", "lr": 0.001, "warmup_steps": 3, "total_steps": 10,
         "lrs": lrs(0.001, lambda s: linear_with_warmup(s, num_warmup_steps=3, num_training_steps=10), 13)},
        {"kind": "cosine", "lr": 3e-4, "warmup_steps": 2, "total_steps": 10,
         "lrs": lrs(3e-4, lambda s: cosine_with_warmup(s, num_warmup_steps=2, num_training_steps=10), 11)},
        {"kind": "cosine", "lr": 1e-3, "warmup_steps": 0, "total_steps": 7,
         "lrs": lrs(1e-3, lambda s: cosine_with_warmup(s, num_warmup_steps=0, num_training_steps=7), 8)},
        {"kind": "cosine", "lr": 2e-3, "warmup_steps": 3, "total_steps": 9, "min_lr": 2e-4,
         "lrs": lrs(2e-3, lambda s: cosine_with_min_lr(s, num_warmup_steps=3, num_training_steps=9,
                                                       min_lr_rate=2e-4 / 2e-3), 10)},
    ]

    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "optim.json")
    with open(path, "w") as f:
        json.dump(fx, f, indent=1)
        f.write("\n")
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
