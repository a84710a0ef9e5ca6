"""Train HazeMatching (guided conditional flow matching) or the U-Net point-predictor baseline.

Runs unchanged on CPU, one GPU, DDP, multi-node and DeepSpeed ZeRO-2/3:

    accelerate launch --config_file accelerate_configs/single_gpu.yaml trainer/train.py \
        --data DATA --output-dir runs/my-run --max-steps 20000

Every random number of a training step (crop, augmentation, noise x0, time t) is a function of
(seed, item key), and the item keys of a step are a function of (seed, step, rank): a resumed run
continues exactly, and N processes with batch b train like one process with batch N*b.
"""

import contextlib
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import ProjectConfiguration
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hazematching.training import checkpoints
from hazematching.training.args import parse_train_config
from hazematching.config import TrainConfig
from hazematching.core import UNet, cfm_loss, keyed_normal, keyed_time, mse_loss, sample_posterior
from hazematching.data.dataset import FixedCropDataset, RandomCropDataset
from hazematching.data.io import DataError, load_splits
from hazematching.data.normalization import Normalization
from hazematching.data.sampling import StepBatchSampler
from hazematching.training.ema import EMA
from hazematching.run import FORMAT_VERSION, architecture_kwargs, atomic_save_safetensors, atomic_write_bytes, save_run, versions
from hazematching.inference.speed import compile_problem
from hazematching.training.visualize import sample_grid, save_png

EMA_NAME = "ema.safetensors"


def flow_inputs(keys: torch.Tensor, seed: int, shape: tuple[int, ...], grid_points: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Noise x0 and time t of each item, computed on ``keys.device`` from (seed, item key) alone."""
    return keyed_normal(keys, seed, *shape), keyed_time(keys, seed, grid_points)


def engine_forward(model, dtype: torch.dtype | None):
    """DeepSpeed's bf16/fp16 engines hold half-precision weights and do not autocast, so they are fed
    images of that dtype (as transformers' Trainer does); t stays fp32 for the time embedding and the
    loss is computed in fp32 from the output."""
    if dtype is None:
        return model

    def forward(x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor | None = None) -> torch.Tensor:
        return model(x.to(dtype), cond.to(dtype), t)

    return forward


def engine_dtype(accelerator: Accelerator) -> torch.dtype | None:
    """The dtype a DeepSpeed engine keeps its weights in (None without DeepSpeed or in fp32)."""
    if accelerator.state.deepspeed_plugin is None:
        return None
    return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(accelerator.mixed_precision)


def resolve_compile(mode: str, use_deepspeed: bool) -> bool:
    """--compile auto/on/off -> whether to compile; warns and trains eagerly where it cannot compile."""
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() else torch.device("cpu")
    main_process = int(os.environ.get("RANK", 0)) == 0
    if mode == "auto" and use_deepspeed and device.type == "cuda":
        # DeepSpeed's engine.compile has not been measured on a GPU by this project yet: opt in with --compile on
        if main_process:
            print("note: --compile auto trains DeepSpeed eagerly; --compile on compiles the DeepSpeed engine", file=sys.stderr)
        return False
    if mode == "off" or (mode == "auto" and device.type != "cuda"):
        return False
    problem = compile_problem(device)
    if problem is not None:
        if main_process:
            print(f"warning: --compile {mode}: torch.compile does not work here ({problem}); training eagerly", file=sys.stderr)
        return False
    return True


def fused_or_foreach(device: torch.device) -> dict:
    """AdamW's fused kernel (one launch for all parameters) where this torch has it for the device,
    else the multi-tensor ``foreach`` implementation; both compute the same update as the loop."""
    if device.type in ("cuda", "cpu") and "fused" in torch.optim.AdamW.__init__.__code__.co_varnames:
        return {"fused": True}
    return {"foreach": True}


def learning_rate(config: TrainConfig, step: int) -> float:
    """Linear warm-up, then constant (as the reference's Adam at a fixed lr)."""
    if config.lr_warmup_steps:
        return config.lr * min(1.0, (step + 1) / config.lr_warmup_steps)
    return config.lr


def full_parameters(accelerator: Accelerator, model):
    """Context in which the unwrapped model's parameters are full tensors (gathers ZeRO-3 shards)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        return deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None)
    return contextlib.nullcontext()


def run_config(config: TrainConfig, normalization: Normalization, step: int, accelerator: Accelerator, extra: dict | None = None) -> dict:
    return {
        "format_version": FORMAT_VERSION,
        "objective": config.objective,
        "architecture": architecture_kwargs(config.model, config.objective),
        "normalization": normalization.to_dict(),
        "sampler": config.sampler.model_dump(),
        "training": json.loads(config.model_dump_json()),
        "step": step,
        "num_processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
        "compiled": accelerator.state.dynamo_plugin.backend.value != "NO",
        "versions": versions(),
        **(extra or {}),
    }


@torch.no_grad()
def validation_loss(model, items: FixedCropDataset, config: TrainConfig, device, autocast) -> float:
    """Loss on fixed validation crops at 5 fixed times with fixed noise: comparable across steps."""
    times = torch.linspace(0.1, 0.9, 5)
    losses = []
    for start in range(0, len(items), config.batch_size):
        batch = [items[i] for i in range(start, min(start + config.batch_size, len(items)))]
        target = torch.stack([b["target"] for b in batch]).to(device)
        cond = torch.stack([b["input"] for b in batch]).to(device)
        with autocast():
            if config.objective == "mse":
                losses.append(float(mse_loss(model, target, cond)) * len(batch))
                continue
            for j, t in enumerate(times):
                keys = torch.arange(start, start + len(batch)) * 10 + j
                noise, _ = flow_inputs(keys.to(device), config.seed + 7, tuple(target.shape[1:]), 0)
                t_batch = torch.full((len(batch),), float(t), device=device)
                losses.append(float(cfm_loss(model, target, cond, noise, t_batch)) * len(batch) / len(times))
    return sum(losses) / len(items)


@torch.no_grad()
def validation_grid(model, items: FixedCropDataset, config: TrainConfig, device, autocast) -> np.ndarray:
    """Rows of input | target | sample 1 | sample 2 | MMSE | std for the first validation crops."""
    batch = [items[i] for i in range(min(4, len(items)))]
    cond = torch.stack([b["input"] for b in batch]).to(device)
    target = torch.stack([b["target"] for b in batch])
    with autocast():
        if config.objective == "mse":
            pred = model(torch.zeros_like(cond), cond).float().cpu()
            return sample_grid(cond.cpu(), target, [pred], pred, None)
        posterior = sample_posterior(model, cond, num_samples=4, steps=config.sampler.steps, seed=config.sampler.seed, keep_samples=True)
    samples = posterior.samples.cpu()
    return sample_grid(cond.cpu(), target, [samples[:, 0], samples[:, 1]], posterior.mean.cpu(), posterior.std.cpu())


def log_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def main(argv: list[str] | None = None) -> None:
    config = parse_train_config(argv, description=__doc__.split("\n")[0])
    if config.mixed_precision == "fp16" and not torch.cuda.is_available():
        sys.exit("error: --mixed-precision fp16 needs a CUDA GPU; use bf16 or no on CPU")
    try:
        train_pairs, val_pairs = load_splits(config.data, config.val_data, config.val_fraction, config.crop_size, mmap=True)
    except DataError as exc:
        sys.exit(f"error: {exc}")
    output_dir = config.output_dir
    checkpoint_dir = output_dir / "checkpoints"
    try:
        resume_path = checkpoints.resolve_resume(config.resume_from_checkpoint, checkpoint_dir)
    except FileNotFoundError as exc:
        sys.exit(f"error: {exc}")

    use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
    compiled = resolve_compile(config.compile, use_deepspeed)
    accelerator = Accelerator(
        # On CPU, cpu=True makes torchrun's processes one gloo group; it would also silently drop a
        # DeepSpeed plugin, so DeepSpeed keeps cpu=False (DeepSpeed then uses its CPU accelerator).
        cpu=not torch.cuda.is_available() and not use_deepspeed,
        mixed_precision=config.mixed_precision,
        gradient_accumulation_steps=config.gradient_accumulation_steps,
        dynamo_backend="inductor" if compiled else "no",  # compiled in prepare(), after DDP/DeepSpeed wrapping
        log_with="tensorboard",
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir / "logs")),
    )
    main_process = accelerator.is_main_process
    if main_process:
        (output_dir / "logs").mkdir(parents=True, exist_ok=True)
        (output_dir / "samples").mkdir(exist_ok=True)
        checkpoint_dir.mkdir(exist_ok=True)
        if config.resume_from_checkpoint == "latest" and resume_path is None:
            print("no complete checkpoint found: starting a new training run", file=sys.stderr)

    normalization = Normalization.from_pairs(train_pairs)
    train_set = RandomCropDataset(train_pairs, config.crop_size, normalization, seed=config.seed, augment=config.augment)
    crops_per_image = math.ceil(config.validation_crops / len(val_pairs))
    val_set = FixedCropDataset(val_pairs, config.crop_size, normalization, crops_per_image)
    val_set.items = val_set.items[: config.validation_crops]

    torch.manual_seed(config.seed)  # identical initial weights on every process
    model = UNet(**architecture_kwargs(config.model, config.objective))
    ema = EMA(model, config.ema_decay)
    if accelerator.device.type == "cuda" and accelerator.state.deepspeed_plugin is None:
        model.to(memory_format=torch.channels_last)  # faster convolutions on tensor cores
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay,
                                  **({} if accelerator.state.deepspeed_plugin else fused_or_foreach(accelerator.device)))

    if accelerator.state.deepspeed_plugin is not None:
        ds_config = accelerator.state.deepspeed_plugin.deepspeed_config
        ds_config["train_micro_batch_size_per_gpu"] = config.batch_size
        ds_config["gradient_clipping"] = config.max_grad_norm
        ds_config["gradient_accumulation_steps"] = config.gradient_accumulation_steps
    model, optimizer = accelerator.prepare(model, optimizer)
    forward = engine_forward(model, engine_dtype(accelerator))

    global_step = 0
    if resume_path is not None:
        state = json.loads((resume_path / checkpoints.COMPLETE_MARKER).read_text())
        wanted = {"objective": config.objective, "architecture": architecture_kwargs(config.model, config.objective)}
        saved = {key: state.get(key) for key in wanted}
        if saved != wanted:
            sys.exit(f"error: {resume_path} was trained as {saved}, but the flags ask for {wanted}; resume with the same model flags")
        accelerator.load_state(str(resume_path))
        ema.load_state_dict(load_file(resume_path / EMA_NAME))
        global_step = state["step"]
        if main_process:
            print(f"resumed from {resume_path} at step {global_step}", file=sys.stderr)
    ema.model.to(accelerator.device)

    batch_sampler = StepBatchSampler(
        len(train_set),
        config.batch_size,
        seed=config.seed,
        rank=accelerator.process_index,
        world_size=accelerator.num_processes,
        start_micro_step=global_step * config.gradient_accumulation_steps,
    )
    workers = config.num_workers if config.num_workers is not None else (4 if accelerator.device.type == "cuda" else 0)
    loader = DataLoader(train_set, batch_sampler=batch_sampler, num_workers=workers, pin_memory=accelerator.device.type == "cuda",
                        persistent_workers=workers > 0, prefetch_factor=4 if workers else None)

    hparams = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in json.loads(config.model_dump_json()).items()}
    accelerator.init_trackers("hazematching", config=hparams)

    def save_checkpoint(step: int) -> None:
        tmp = checkpoints.temporary_dir(checkpoint_dir, step)
        if main_process:
            checkpoints.clean_temporary(checkpoint_dir)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(tmp))
        if main_process:
            atomic_save_safetensors(ema.state_dict(), tmp / EMA_NAME)
            state = {"step": step, "objective": config.objective, "architecture": architecture_kwargs(config.model, config.objective)}
            atomic_write_bytes(tmp / checkpoints.COMPLETE_MARKER, json.dumps(state).encode())
            checkpoints.publish(tmp, step)
            checkpoints.rotate(checkpoint_dir, config.checkpoints_total_limit)
            save_run(output_dir, ema.state_dict(), run_config(config, normalization, step, accelerator))
        accelerator.wait_for_everyone()

    def validate(step: int) -> None:
        if main_process:
            loss = validation_loss(ema.model, val_set, config, accelerator.device, accelerator.autocast)
            grid = validation_grid(ema.model, val_set, config, accelerator.device, accelerator.autocast)
            save_png(grid, output_dir / "samples" / f"step-{step:07d}.png")
            accelerator.log({"val/loss": loss}, step=step)
            tracker = accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_image("val/input|target|samples|mmse|std", grid, step, dataformats="HW")
            log_jsonl(output_dir / "logs" / "validation.jsonl", {"step": step, "val_loss": loss})
        accelerator.wait_for_everyone()

    if config.validation_steps and global_step == 0:
        validate(0)

    progress = tqdm(total=config.max_steps, initial=global_step, desc="training", disable=not main_process)
    samples_per_step = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
    window_start, window_steps = time.perf_counter(), 0
    model.train()
    for batch in loader:
        if global_step >= config.max_steps:
            break
        target = batch["target"].to(accelerator.device, non_blocking=True)
        cond = batch["input"].to(accelerator.device, non_blocking=True)
        with accelerator.accumulate(model):
            if config.objective == "cfm":
                keys = batch["key"].to(accelerator.device, non_blocking=True)
                noise, t = flow_inputs(keys, config.seed, tuple(target.shape[1:]), config.time_grid_points)
                loss = cfm_loss(forward, target, cond, noise, t)
            else:
                loss = mse_loss(forward, target, cond)
            accelerator.backward(loss)
            if accelerator.sync_gradients:
                accelerator.clip_grad_norm_(model.parameters(), config.max_grad_norm)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, global_step)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        if not accelerator.sync_gradients:
            continue
        global_step += 1
        window_steps += 1
        unwrapped = accelerator.unwrap_model(model)
        with full_parameters(accelerator, unwrapped):
            ema.update(unwrapped.parameters(), global_step)
        progress.update(1)
        if global_step % config.log_steps == 0 or global_step == config.max_steps:
            mean_loss = accelerator.reduce(loss.detach().float(), reduction="mean").item()
            elapsed = time.perf_counter() - window_start
            record = {
                "train/loss": mean_loss,
                "train/lr": learning_rate(config, global_step - 1),
                "train/samples_per_s": window_steps * samples_per_step / max(elapsed, 1e-9),
            }
            accelerator.log(record, step=global_step)
            if main_process:
                progress.set_postfix(loss=f"{mean_loss:.4f}")
                log_jsonl(output_dir / "logs" / "train.jsonl", {"step": global_step, **record})
            window_start, window_steps = time.perf_counter(), 0
        if global_step % config.checkpointing_steps == 0:
            save_checkpoint(global_step)
        if config.validation_steps and global_step % config.validation_steps == 0:
            validate(global_step)
    progress.close()

    # Record every rank's weight checksum: equal values prove the processes trained one model.
    unwrapped = accelerator.unwrap_model(model)
    with full_parameters(accelerator, unwrapped):
        checksum = torch.stack([sum(p.detach().double().sum() for p in unwrapped.parameters())]).to(accelerator.device)
    rank_checksums = accelerator.gather(checksum).cpu().tolist()
    if main_process:
        extra = {"rank_weight_checksums": rank_checksums}
        save_run(output_dir, ema.state_dict(), run_config(config, normalization, global_step, accelerator, extra))
        print(f"saved {output_dir / 'model.safetensors'} (step {global_step}, {accelerator.num_processes} process(es))", file=sys.stderr)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    # Tear the process group down before interpreter exit: a gloo group still alive at exit can
    # abort ("terminate called without an active exception") and fail the whole launch.
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
