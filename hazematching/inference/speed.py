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

from hazematching.settings import (  # the defaults live with the typed options, whose help quotes them
    CPU_COMPILE_MIN_EVALUATIONS,
    CPU_TILES_PER_CALL,
    GPU_COMPILE_MIN_EVALUATIONS,
    GPU_IMAGES_PER_CALL,
    GPU_TILES_PER_CALL,
    LARGE_GPU_BYTES,
    LARGE_GPU_IMAGES_PER_CALL,
    LARGE_GPU_TILES_PER_CALL,
)

log = logging.getLogger(__name__)

MODES = ("auto", "on", "off")


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
        # dynamic=None: the first tile shape compiles static kernels; a second shape (an image of
        # another size) recompiles once with symbolic sizes, which then serve every later size
        self.compiled = torch.compile(net, dynamic=None, options={"freezing": True}) if compile else None
        self.out_channels = getattr(net, "out_channels", 1)
        self.step_conditioning = getattr(net, "step_conditioning", False)

    def _call(self, fn, x, cond, t, d):
        args = (x, cond, t) if d is None else (x, cond, t, d)
        if self.bf16:
            with torch.autocast(x.device.type, dtype=torch.bfloat16):
                return fn(*args).float()
        return fn(*args)

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor, d: torch.Tensor | None = None
    ) -> torch.Tensor:
        if self.compiled is not None:
            try:
                return self._call(self.compiled, x, cond, t, d)
            except Exception as exc:  # compilation problems surface at the first call
                warnings.warn(
                    f"torch.compile failed ({type(exc).__name__}: {str(exc)[:200]}); running eagerly", stacklevel=2
                )
                self.compiled = None
        return self._call(self.net, x, cond, t, d)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``--precision`` auto/fp32/bf16 -> the precision the network runs in on ``device``: ``auto`` is
    bf16 autocast where the GPU supports it, else fp32."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ValueError(f"--precision {precision}: expected auto, fp32 or bf16")
    return "bf16" if precision == "bf16" or (precision == "auto" and bf16_supported(device)) else "fp32"


def fast_network(
    net: nn.Module, device: torch.device, compile: str = "auto", precision: str = "auto", evaluations: int = 0
) -> nn.Module:
    """``compile``/``precision`` in auto/on/off and auto/fp32/bf16. ``evaluations`` (tile batches x
    samples x steps x evaluations per step of the whole job) lets ``auto`` skip compilation where it
    would cost more than it saves."""
    if compile not in MODES:
        raise ValueError(f"--compile {compile}: expected one of {', '.join(MODES)}")
    if precision == "bf16" and device.type == "cpu":
        log.warning("bf16 on the CPU is emulated on most processors and usually slower than fp32")
    bf16 = resolve_precision(precision, device) == "bf16"
    net = copy.deepcopy(net).eval().to(memory_format=torch.channels_last)  # leave the caller's model as it is
    return FastNetwork(net, should_compile(compile, device, evaluations), bf16)


def should_compile(mode: str, device: torch.device, evaluations: int) -> bool:
    """``auto`` compiles only jobs large enough for the measured compile cost to pay back."""
    if mode != "auto":
        return mode == "on"
    threshold = GPU_COMPILE_MIN_EVALUATIONS if device.type == "cuda" else CPU_COMPILE_MIN_EVALUATIONS
    return evaluations >= threshold


def large_gpu(device: torch.device) -> bool:
    return device.type == "cuda" and torch.cuda.get_device_properties(device).total_memory >= LARGE_GPU_BYTES


def default_tiles_per_call(device: torch.device) -> int:
    """Default tiles per network call: 1 on a CPU (bigger batches are slower per tile), 8 or 16 on a GPU."""
    if device.type == "cpu":
        return CPU_TILES_PER_CALL
    return LARGE_GPU_TILES_PER_CALL if large_gpu(device) else GPU_TILES_PER_CALL


def images_per_call(device: torch.device) -> int:
    """Images (tiles x samples) per network call the sampler aims at on this device."""
    return LARGE_GPU_IMAGES_PER_CALL if large_gpu(device) else GPU_IMAGES_PER_CALL


def default_samples_per_call(
    device: torch.device, samples: int, tiles_per_call: int, target: int = GPU_IMAGES_PER_CALL
) -> int:
    """How many samples of a tile batch go through the network together. On a GPU, enough to give
    it ~``target`` images per call; on a CPU one (bigger batches only thrash the caches). Always a
    divisor of ``samples``, so every call has the same shape (one compilation)."""
    if device.type == "cpu":
        return 1
    wanted = max(1, min(samples, target // max(1, tiles_per_call)))
    return max(d for d in range(1, wanted + 1) if samples % d == 0)
