"""How the network meets the accelerator: compilation, DeepSpeed's half-precision engines, ZeRO-3
parameter gathering."""

import contextlib
import os
import sys

import torch
from accelerate import Accelerator

from hazematching.inference.speed import compile_problem


def resolve_compile(mode: str, use_deepspeed: bool) -> bool:
    """--compile auto/on/off -> whether to compile; warns and trains eagerly where it cannot compile."""
    device = (
        torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    )
    main_process = int(os.environ.get("RANK", 0)) == 0
    if mode == "auto" and use_deepspeed and device.type == "cuda":
        # DeepSpeed's engine.compile has not been measured on a GPU by this project yet: opt in with --compile on
        if main_process:
            print(
                "note: --compile auto trains DeepSpeed eagerly; --compile on compiles the DeepSpeed engine",
                file=sys.stderr,
            )
        return False
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return False
    problem = compile_problem(device)
    if problem is not None:
        if main_process:
            print(
                f"warning: --compile {mode}: torch.compile does not work here ({problem}); training eagerly",
                file=sys.stderr,
            )
        return False
    return True


def engine_dtype(accelerator: Accelerator) -> torch.dtype | None:
    """The dtype a DeepSpeed engine keeps its weights in (None without DeepSpeed or in fp32)."""
    if accelerator.state.deepspeed_plugin is None:
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)


def engine_forward(model, dtype: torch.dtype | None):
    """DeepSpeed's bf16/fp16 engines hold half-precision weights and do not autocast, so they are fed
    images of that dtype (as transformers' Trainer does); t stays fp32 for the time embedding and the
    loss is computed in fp32 from the output."""
    if dtype is None:
        return model

    def forward(
        x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor | None = None, d: torch.Tensor | None = None
    ) -> torch.Tensor:
        if d is None:  # networks without step conditioning take three arguments
            return model(x.to(dtype), cond.to(dtype), t)
        return model(x.to(dtype), cond.to(dtype), t, d)

    return forward


def full_parameters(accelerator: Accelerator, model):
    """Context in which the unwrapped model's parameters are full tensors (gathers ZeRO-3 shards)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()
