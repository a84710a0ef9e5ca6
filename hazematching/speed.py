"""The velocity network prepared for fast inference on a device: channels_last, bf16 autocast on
GPUs, ``torch.compile`` (with weight freezing) and a clean fallback to eager mode.

Only the network is wrapped; the sampler, its noise and the tiling are untouched, so a fast
prediction is the plain one up to floating-point rounding (tested).
"""

import copy
import logging
import warnings

import torch
from torch import nn

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")
# On a CPU, compiling the U-Net takes ~5 s (inductor cache warm) to ~35 s (cold) and saves only
# ~4 % per call (~10 ms on a 304^2 tile, 2 cores; the eager channels_last network already runs
# fused layer norms): worth it from a few thousand network evaluations on.
CPU_COMPILE_MIN_EVALUATIONS = 3000


def compile_problem(device: torch.device) -> str | None:
    """Why ``torch.compile`` cannot run on ``device`` (None if it can). A missing compiler (no C++
    compiler for the CPU, no triton for a GPU) only shows at the first compiled call, so this
    compiles and runs a tiny function."""
    try:
        torch.compile(lambda x: torch.sin(x) * 2 + 1, dynamic=False)(torch.ones(8, device=device))
    except Exception as exc:  # any backend failure means: train eagerly
        return f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:200]}"
    return None


def bf16_supported(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.is_bf16_supported()


class FastNetwork(nn.Module):
    """Calls ``net`` under bf16 autocast (if asked) through ``torch.compile`` (if asked); the first
    compiled call that fails (no C++ compiler, unsupported backend) switches to eager mode with a
    warning instead of failing the prediction."""

    def __init__(self, net: nn.Module, compile: bool, bf16: bool):
        super().__init__()
        self.net = net
        self.bf16 = bf16
        self.compiled = torch.compile(net, dynamic=False, options={"freezing": True}) if compile else None
        self.in_channels = getattr(net, "in_channels", 1)

    def _call(self, fn, x, cond, t):
        if self.bf16:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return fn(x, cond, t).float()
        return fn(x, cond, t)

    def forward(self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self._call(self.compiled, x, cond, t)
            except Exception as exc:  # compilation problems surface at the first call
                warnings.warn(f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); running eagerly", stacklevel=2)
                self.compiled = None
        return self._call(self.net, x, cond, t)


def fast_network(net: nn.Module, device: torch.device, compile: str = "auto", precision: str = "auto",
                 evaluations: int = 0) -> nn.Module:
    """``compile``/``precision`` in auto/on/off and auto/fp32/bf16. ``evaluations`` (network calls
    the job will make) lets ``auto`` skip compilation where it would cost more than it saves."""
    if compile not in MODES:
        raise ValueError(f"--compile {compile}: expected one of {', '.join(MODES)}")
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision {precision}: expected auto, fp32 or bf16")
    if precision == "bf16" and device.type == "cpu":
        log.warning("bf16 on the CPU is emulated on most processors and usually slower than fp32")
    bf16 = precision == "bf16" or (precision == "auto" and bf16_supported(device))
    use_compile = compile == "on" or (
        compile == "auto" and (device.type == "cuda" or evaluations >= CPU_COMPILE_MIN_EVALUATIONS)
    )
    net = copy.deepcopy(net).eval().to(memory_format=torch.channels_last)  # leave the caller's model as it is
    return FastNetwork(net, use_compile, bf16)


def samples_per_batch(device: torch.device, samples: int, tiles_per_batch: int, target: int = 32) -> int:
    """How many samples of a tile batch go through the network together. On a GPU, enough to give
    it ~``target`` images per call; on a CPU one (bigger batches only thrash the caches). Always a
    divisor of ``samples``, so every call has the same shape (one compilation)."""
    if device.type == "cpu":
        return 1
    wanted = max(1, min(samples, target // max(1, tiles_per_batch)))
    return max(d for d in range(1, wanted + 1) if samples % d == 0)
