"""Timing and FLOP helpers shared by the benchmark scripts (imported as ``benchmarking`` from scripts/)."""

import time

import torch
from torch.utils.flop_counter import FlopCounterMode


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device | None = None):
    device = device or torch.device("cpu")
    synchronize(device)
    start = time.perf_counter()
    result = fn()
    synchronize(device)
    return result, time.perf_counter() - start


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int = 2048) -> float:
    """Best FLOP/s of an n x n matrix product: the practical peak that convolutions (lowered to
    matrix products by oneDNN/cuDNN) can reach on this device."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(6):
        best = min(best, timed(lambda: a @ b, device)[1])
    return 2 * n**3 / best


def flops_per_pixel(net, device: torch.device, size: int = 128) -> float:
    """Network FLOPs per input pixel and call (the U-Net's cost is linear in the pixels)."""
    x = torch.zeros(1, 1, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, x, torch.zeros(1, device=device))
    return counter.get_total_flops() / size**2
