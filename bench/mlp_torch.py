"""mlp_torch.py — the PyTorch peer of bench/mlp.lua: one training step of a
4-layer MLP (width 1024, batch 256, ReLU, MSE, SGD) on N threads.
Prints one line: the median step time in milliseconds.
Usage: /usr/bin/python3 bench/mlp_torch.py THREADS STEPS"""
import sys
import time

import torch

threads, steps = int(sys.argv[1]), int(sys.argv[2])
torch.set_num_threads(threads)
torch.manual_seed(0)
width, batch, layers, lr = 1024, 256, 4, 1e-3
W = [(torch.randn(width, width) * 0.03).requires_grad_() for _ in range(layers)]
b = [torch.zeros(width, requires_grad=True) for _ in range(layers)]
x = torch.randn(batch, width)
y = torch.randn(batch, width)


def step():
    h = x
    for i in range(layers):
        h = h @ W[i].t() + b[i]
        if i < layers - 1:
            h = torch.relu(h)
    loss = ((h - y) ** 2).mean()
    loss.backward()
    with torch.no_grad():
        for p in W + b:
            p.add_(p.grad, alpha=-lr)
            p.grad = None
    return loss.item()


for _ in range(3):
    step()
times = []
for _ in range(steps):
    t0 = time.perf_counter()
    step()
    times.append(time.perf_counter() - t0)
times.sort()
print(f"{1000 * times[len(times) // 2]:.3f}")
