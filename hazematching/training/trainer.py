"""Train HazeMatching (guided conditional flow matching) or the U-Net point-predictor baseline.

Runs unchanged on CPU, one GPU, DDP, multi-node and DeepSpeed ZeRO-2/3:

    accelerate launch --config_file accelerate_configs/single_gpu.yaml trainer/train.py \
        --data DATA --output-dir runs/my-run --max-steps 20000

Every random number of a training step (crop, augmentation, noise x0, time t) is a function of
(seed, item key), and the item keys of a step are a function of (seed, step, rank): a resumed run
continues exactly, and N processes with batch b train like one process with batch N*b.
"""

import json
import math
import os
import socket
import sys
import time
import uuid
from dataclasses import astuple
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import InitProcessGroupKwargs, ProjectConfiguration, broadcast_object_list, gather_object
from pydantic import ValidationError
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from hazematching.architecture import is_derived, parse_architecture
from hazematching.config import TrainConfig, format_validation_error
from hazematching.core import cfm_loss, keyed_normal, keyed_time, mse_loss, shortcut_loss
from hazematching.core.noise import keyed_fraction
from hazematching.data.checks import check_pairs
from hazematching.data.dataset import FixedCropDataset, RandomCropDataset
from hazematching.data.io import DataError, load_splits
from hazematching.data.normalization import Normalization
from hazematching.data.sampling import StepBatchSampler
from hazematching.run import (
    FORMAT_VERSION,
    WEIGHTS_NAME,
    RunDescription,
    RunError,
    SettingChange,
    atomic_save_safetensors,
    atomic_write_bytes,
    read_description,
    save_run,
    versions,
)
from hazematching.training import checkpoints
from hazematching.training.accelerated import engine_dtype, engine_forward, full_parameters, resolve_compile
from hazematching.training.args import parse_train_config
from hazematching.training.ema import EMA
from hazematching.training.optim import fused_or_foreach, learning_rate
from hazematching.training.validation import validation_grid, validation_loss
from hazematching.training.visualize import save_png

EMA_NAME = "ema.safetensors"


# flags that say how to start, not what is trained
_NOT_A_CHANGE = ("resume_from_checkpoint",)


def _stats(norm: Normalization) -> str:
    return (
        f"input {norm.input_mean:.4g} +- {norm.input_std:.4g}, target {norm.target_mean:.4g} +- {norm.target_std:.4g}"
    )


def _split_line(train_pairs, val_pairs, config: TrainConfig) -> str:
    """How the data were split, so that a user sees which files validate (none of them train)."""

    def folder(pairs):
        return pairs[0].input_path.parent if pairs and pairs[0].input_path is not None else config.data

    if config.val_data is not None or folder(val_pairs) != folder(train_pairs):
        held_out = f"validating on the {len(val_pairs)} pair(s) of {folder(val_pairs)}"
    else:
        held_out = (
            f"validating on the last {len(val_pairs)} file(s) by name ({val_pairs[0].name} ... {val_pairs[-1].name}; "
            "--val-fraction sets how many, --val-data a folder of its own)"
        )
    return f"data: training on {len(train_pairs)} pair(s) of {folder(train_pairs)}, {held_out}"


class TrainingError(Exception):
    """A problem with the data, the flags or the checkpoint to resume, found before training."""


def log_jsonl(path: Path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def trim_jsonl(path: Path, step: int) -> None:
    """Drop the records after ``step`` (a resumed run writes those steps again), atomically."""
    if path.is_file():
        kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        atomic_write_bytes(path, "".join(line + "\n" for line in kept).encode())


# What ``--init-from`` takes from the run it fine-tunes unless the flags (or --config) give it: the
# network, and for a reference network the window its attention was trained on; the time grid; the
# prediction defaults.
INHERITED = ("model", "crop_size", "time_grid_points", "sampler")


def with_base_run_settings(config: TrainConfig) -> tuple[TrainConfig, list[str]]:
    """``config`` with the ``INHERITED`` settings of the ``--init-from`` run that were not given (and
    their names), so that fine-tuning an imported paper model needs no model flags."""
    if config.init_from is None:
        return config, []
    try:
        base = read_description(config.init_from)
    except RunError as exc:
        raise TrainingError(f"--init-from {config.init_from}: {exc}") from exc
    given = config.model_fields_set
    taken = {
        "model": base.architecture.model_dump(mode="json"),
        "crop_size": base.training.crop_size if base.architecture.kind == "reference" else config.crop_size,
        "time_grid_points": base.training.time_grid_points,
        # explicit: a run without the field (an earlier release's) samples independently, and so does its child
        "sampler": base.sampler.model_dump() | {"sample_noise": base.sampler.sample_noise or "independent"},
    }
    taken = {key: value for key, value in taken.items() if key not in given}
    if "model" in given and "kind" not in config.model.model_fields_set:
        # model flags without --architecture change that run's network, not the default one
        fields = type(config.model).model_fields
        set_here = {n: getattr(config.model, n) for n in config.model.model_fields_set if not is_derived(fields[n])}
        taken["model"] = base.architecture.model_dump(mode="json") | set_here
    if "model" in taken:
        taken["model"].pop("step_conditioning", None)  # set again from --shortcut-fraction
    if "sampler" in taken and "time_grid_points" in given:
        taken["sampler"].pop("steps")  # a new time grid brings its own Euler steps (config.py)
    if "sampler" in taken and config.mean_anchor_fraction == 0:
        taken["sampler"].pop("mmse", None)  # a child not trained at the anchor makes its MMSE from samples
    if not taken:
        return config, []
    data = config.model_dump(mode="json", exclude=set(taken)) | taken
    try:
        adopted = TrainConfig(**data)
    except ValidationError as exc:
        raise TrainingError(f"--init-from {config.init_from}: {format_validation_error(exc)}") from exc
    return adopted, sorted(taken)


def with_resumed_sample_noise(config: TrainConfig, saved: dict | None) -> TrainConfig:
    """``config`` with the sample noise of the run it resumes (``saved``: that run's training settings),
    unless the flag gives it: a run trained before antithetic pairs became the default stores no
    sample noise and keeps sampling independently, as its predictions so far did."""
    if saved is None or config.objective != "cfm" or "sample_noise" in config.sampler.model_fields_set:
        return config
    noise = saved.get("sampler", {}).get("sample_noise", "independent")
    if noise == config.sampler.sample_noise:
        return config
    return config.model_copy(update={"sampler": config.sampler.model_copy(update={"sample_noise": noise})})


def data_paths_absolute(config: TrainConfig) -> dict:
    """The data folders as absolute paths, for the run's config.json and checkpoints: export (its test
    image), the scripts and a resume read them from wherever they run, not the folder training started in."""
    absolute = {name: getattr(config, name) for name in ("data", "val_data") if getattr(config, name) is not None}
    return {name: Path(os.path.abspath(path)) for name, path in absolute.items()}  # "..": gone, links: kept


class Trainer:
    """One training run, in the order it happens: ``__init__`` sets up (data, accelerator, model,
    optimiser, resume, loader), ``train`` loops, calling ``validate`` and ``save_checkpoint`` on
    their steps, and ``finish`` saves the model and closes the process group."""

    def __init__(self, config: TrainConfig):
        config, self.inherited = with_base_run_settings(config)
        self.config = config = config.model_copy(update=data_paths_absolute(config))
        if config.mixed_precision == "fp16" and not torch.cuda.is_available():
            raise TrainingError("--mixed-precision fp16 needs a CUDA GPU; use bf16 or no on CPU")
        self.output_dir = config.output_dir
        self.checkpoint_dir = self.output_dir / "checkpoints"
        problem, train_pairs, val_pairs, resume_path, data_warnings = None, None, None, None, []
        try:
            train_pairs, val_pairs = load_splits(
                config.data, config.val_data, config.val_fraction, config.crop_size, mmap=True
            )
            data_warnings = check_pairs(train_pairs, "training") + check_pairs(val_pairs, "validation")
            resume_path = checkpoints.resolve_resume(config.resume_from_checkpoint, self.checkpoint_dir)
        except (DataError, FileNotFoundError) as exc:
            problem = str(exc)

        self.accelerator = self._accelerator()
        self.main_process = self.accelerator.is_main_process
        # a problem one process (one node) found stops every process now, not at a collective 30 minutes later
        problems = [p for p in gather_object([problem]) if p is not None]
        if problems:
            raise TrainingError(problems[0])
        if self.main_process:
            (self.output_dir / "logs").mkdir(parents=True, exist_ok=True)
            (self.output_dir / "samples").mkdir(exist_ok=True)
            self.checkpoint_dir.mkdir(exist_ok=True)
            print(_split_line(train_pairs, val_pairs, config), file=sys.stderr)
            if self.inherited:
                print(
                    f"fine-tuning {config.init_from}: {', '.join(self.inherited)} taken from that run (flags override)",
                    file=sys.stderr,
                )
            for warning in data_warnings:
                print(warning, file=sys.stderr)
            if config.resume_from_checkpoint == "latest" and resume_path is None:
                print("no complete checkpoint found: starting a new training run", file=sys.stderr)
        self._check_shared_output()
        # every process resumes what process 0 found: another node's view of a shared folder can lag
        # (NFS caches directory listings), and processes that load different checkpoints train apart
        resume_path = broadcast_object_list([resume_path])[0]
        if self.main_process and resume_path is None:  # a fresh start: logs of an abandoned attempt go
            for name in ("train.jsonl", "validation.jsonl"):
                trim_jsonl(self.output_dir / "logs" / name, -1)

        self.base_state = None  # weights of --init-from, loaded into the new network
        self.resume_state = (
            json.loads((resume_path / checkpoints.COMPLETE_MARKER).read_text()) if resume_path is not None else None
        )
        self.setting_changes: list[SettingChange] = []
        if self.resume_state is not None:
            self._check_resumable(resume_path)
            self.config = config = with_resumed_sample_noise(config, self._saved_training())
        if config.init_from is not None:
            base = self._base_run(config.init_from)
            self.normalization = Normalization(**base.normalization.model_dump())  # what the network was trained on
        elif self.resume_state is not None:
            self.normalization = self._resumed_normalization(resume_path, train_pairs)
            self.setting_changes = self._setting_changes(resume_path, self._rewind(resume_path))
        else:
            self.normalization = Normalization.from_pairs(train_pairs)
        self.train_set = RandomCropDataset(
            train_pairs, config.crop_size, self.normalization, seed=config.seed, augment=config.augment
        )
        crops_per_image = math.ceil(config.validation_crops / len(val_pairs))
        self.val_set = FixedCropDataset(val_pairs, config.crop_size, self.normalization, crops_per_image)
        self.val_set.items = self.val_set.items[: config.validation_crops]

        self._model_and_optimizer()
        self.global_step = self._resume(resume_path) if resume_path is not None else 0
        self.ema.model.to(self.accelerator.device)
        self.loader = self._loader()
        hparams = {
            k: (v if isinstance(v, (int, float, str, bool)) else str(v))
            for k, v in json.loads(config.model_dump_json()).items()
        }
        self.accelerator.init_trackers("hazematching", config=hparams)

    def _check_shared_output(self) -> None:
        """Every process must see the checkpoint folder the main process writes (one folder shared by all
        nodes); found out here, not at the first checkpoint hours later."""
        accelerator = self.accelerator
        if accelerator.num_processes == 1:
            return
        token = broadcast_object_list([uuid.uuid4().hex if self.main_process else None])[0]
        probe = self.checkpoint_dir / f".tmp-shared-{token}"
        if self.main_process:
            probe.write_text(token)
        accelerator.wait_for_everyone()
        deadline = time.monotonic() + 10  # an NFS client may cache "not there" for a few seconds
        while not probe.is_file() and time.monotonic() < deadline:
            time.sleep(0.5)
        here = (accelerator.process_index, socket.gethostname(), probe.is_file(), str(self.output_dir.absolute()))
        seen = gather_object([here])
        accelerator.wait_for_everyone()
        if self.main_process:
            probe.unlink()
        blind = [f"process {rank} on {host} (looking in {path})" for rank, host, ok, path in seen if not ok]
        if blind:
            raise TrainingError(
                f"--output-dir {self.output_dir} is not shared between the processes: {', '.join(blind)} cannot "
                f"see the files process 0 writes in {seen[0][3]}. Checkpoints hold files of every process, so a "
                "multi-node run needs an --output-dir on a file system that every node mounts (NFS, Lustre, GPFS), "
                "at the same path on every node"
            )

    def _accelerator(self) -> Accelerator:
        config = self.config
        use_deepspeed = os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"
        compiled = resolve_compile(config.compile, use_deepspeed)
        handlers = []
        if use_deepspeed and not torch.cuda.is_available():
            # DeepSpeed on CPU: without a named backend accelerate counts one process while DeepSpeed's
            # group has all of them (and then rejects the batch size); gloo makes both agree.
            handlers.append(InitProcessGroupKwargs(backend="gloo"))
        return Accelerator(
            # On CPU, cpu=True makes torchrun's processes one gloo group; it would also silently drop a
            # DeepSpeed plugin, so DeepSpeed keeps cpu=False (DeepSpeed then uses its CPU accelerator).
            cpu=not torch.cuda.is_available() and not use_deepspeed,
            mixed_precision=config.mixed_precision,
            gradient_accumulation_steps=config.gradient_accumulation_steps,
            dynamo_backend="inductor" if compiled else "no",  # compiled in prepare(), after DDP/DeepSpeed wrapping
            log_with="tensorboard",
            kwargs_handlers=handlers,
            project_config=ProjectConfiguration(
                project_dir=str(self.output_dir), logging_dir=str(self.output_dir / "logs")
            ),
        )

    def _base_run(self, run_dir: Path) -> RunDescription:
        """The run that ``--init-from`` fine-tunes: same network apart from step conditioning."""
        try:
            base = read_description(run_dir)
            self.base_state = load_file(Path(run_dir) / WEIGHTS_NAME)
        except (RunError, OSError) as exc:
            raise TrainingError(f"--init-from {run_dir}: {exc}") from exc
        wanted = self.config.model.model_dump(mode="json") | {"objective": self.config.objective}
        have = base.architecture.model_dump(mode="json") | {"objective": base.objective}
        wanted.pop("step_conditioning", None), have.pop("step_conditioning", None)
        wanted.setdefault("kind", "unet"), have.setdefault("kind", "unet")
        differ = [
            f"{key}: that run {have.get(key)}, the flags {wanted.get(key)}"
            for key in sorted(set(have) | set(wanted))
            if have.get(key) != wanted.get(key)
        ]
        if have["kind"] != wanted["kind"]:
            differ = [f"that run is a {have['kind']} network, the flags ask for --architecture {wanted['kind']}"]
        if differ:
            raise TrainingError(
                f"--init-from {run_dir}: the flags ask for another network ({'; '.join(differ)}); give the same model "
                "flags as that run, or leave them out to fine-tune its network as it is"
            )
        return base

    def _model_and_optimizer(self) -> None:
        config, accelerator = self.config, self.accelerator
        torch.manual_seed(config.seed)  # identical initial weights on every process
        model = config.model.build()
        if self.base_state is not None:
            missing, unexpected = model.load_state_dict(self.base_state, strict=False)
            if unexpected or any(not key.startswith("step_mlp.") for key in missing):
                raise TrainingError(
                    f"--init-from {config.init_from}: weights do not fit (missing {missing[:3]}, unexpected "
                    f"{unexpected[:3]})"
                )
        self.ema = EMA(model, config.ema_decay)
        deepspeed = accelerator.state.deepspeed_plugin
        if accelerator.device.type == "cuda" and deepspeed is None:
            model.to(memory_format=torch.channels_last)  # faster convolutions on tensor cores
        optimizer = torch.optim.AdamW(
            model.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            **({} if deepspeed else fused_or_foreach(accelerator.device)),
        )
        if deepspeed is not None:
            deepspeed.deepspeed_config["train_micro_batch_size_per_gpu"] = config.batch_size
            deepspeed.deepspeed_config["gradient_clipping"] = config.max_grad_norm
            deepspeed.deepspeed_config["gradient_accumulation_steps"] = config.gradient_accumulation_steps
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.forward = engine_forward(self.model, engine_dtype(accelerator))

    def _architecture(self) -> dict:
        return {"objective": self.config.objective, "architecture": self.config.model.model_dump(mode="json")}

    def _resumed_normalization(self, resume_path: Path, train_pairs) -> Normalization:
        """The normalisation the checkpoint's network was trained with, never the new --data's: the same
        weights with other statistics predict another image (17 dB apart in one reported case)."""
        stored = self.resume_state.get("normalization")
        if stored is None:  # checkpoints of releases before 0.3 keep it only in the run's config.json
            try:
                stored = read_description(self.output_dir).normalization.model_dump()
            except RunError:
                stored = None
        fresh = Normalization.from_pairs(train_pairs)
        if stored is None:
            if self.main_process:
                print(
                    f"warning: {resume_path} stores no normalisation and {self.output_dir / 'config.json'} is missing: "
                    "using the statistics of --data, which may differ from what the network was trained with",
                    file=sys.stderr,
                )
            return fresh
        kept = Normalization(**stored)
        differs = any(abs(a - b) > 1e-3 * max(abs(a), abs(b), 1e-6) for a, b in zip(astuple(kept), astuple(fresh)))
        if differs and self.main_process:
            print(
                f"note: resuming keeps the normalisation the network was trained with ({_stats(kept)}); the pairs "
                f"of --data {self.config.data} would give {_stats(fresh)}. To train on new data with its own "
                "statistics, start a new run (--init-from a finished run keeps the old statistics too)",
                file=sys.stderr,
            )
        return kept

    def _rewind(self, resume_path: Path) -> int | None:
        """A resume from an older checkpoint than the run had reached (an explicit path, or ``latest`` in a
        run of an earlier release that ended between checkpoints): what is newer is set aside in
        superseded/ before anything is overwritten; returns the step the run had reached."""
        rewound = None
        if self.main_process:
            try:
                run_step = read_description(self.output_dir).step
            except RunError:
                run_step = None
            step = self.resume_state["step"]
            kept = checkpoints.set_aside_newer(self.output_dir, step, run_step)
            if kept is not None:
                rewound = int(kept.name.split("-")[1])
                print(
                    f"note: going back from step {rewound} to step {step}: the newer model, config.json, logs and "
                    f"checkpoints are kept in {kept}",
                    file=sys.stderr,
                )
        self.accelerator.wait_for_everyone()  # no process looks at checkpoints/ while they move
        return broadcast_object_list([rewound])[0]

    def _saved_training(self) -> dict | None:
        """The resumed run's training settings: its checkpoint's, else (older checkpoints) its config.json's."""
        saved = self.resume_state.get("training")
        if saved is None:
            try:
                saved = read_description(self.output_dir).training.model_dump(mode="json")
            except RunError:
                pass
        return saved

    def _setting_changes(self, resume_path: Path, rewound_from: int | None) -> list[SettingChange]:
        """The run's history of changed settings, plus what this resume changes (said in one line) and
        the step it went back from."""
        history = [SettingChange(**c) for c in self.resume_state.get("setting_changes", [])]
        saved = self._saved_training()
        changes = {}
        if saved is not None:
            now = self.config.model_dump(mode="json")
            # not a flag, but it changes the effective batch (batch size x processes) of a DDP run
            saved = {**saved, "num_processes": self.resume_state.get("num_processes", saved.get("num_processes"))}
            now["num_processes"] = self.accelerator.num_processes
            # a field newer than the checkpoint at its default is no change (old runs resume without a word)
            fields = TrainConfig.model_fields
            changes = {
                key: (saved.get(key), value)
                for key, value in now.items()
                if key not in _NOT_A_CHANGE
                and saved.get(key) != value
                and not (key not in saved and key in fields and value == fields[key].default)
            }
        step = self.resume_state["step"]
        if changes and self.main_process:
            listed = "; ".join(f"{key} {old} -> {new}" for key, (old, new) in changes.items())
            print(f"resuming at step {step} with changed settings: {listed} (recorded in config.json)", file=sys.stderr)
        if not changes and rewound_from is None:
            return history
        return [*history, SettingChange(step=step, changes=changes, rewound_from_step=rewound_from)]

    def _check_resumable(self, resume_path: Path) -> None:
        """The same network (and, for ZeRO, the same number of processes) as the checkpoint, checked before
        anything about the resume is said or changed."""
        state = self.resume_state
        wanted = self._architecture()
        saved = {key: state.get(key) for key in wanted}
        if saved["architecture"] is not None:  # checkpoints of older releases leave out defaults
            saved["architecture"] = parse_architecture(saved["architecture"]).model_dump(mode="json")
        if saved != wanted:
            flat_saved = {"objective": saved["objective"], **(saved["architecture"] or {})}
            flat_wanted = {"objective": wanted["objective"], **wanted["architecture"]}
            differ = [
                f"{key}: checkpoint {flat_saved.get(key)}, flags {flat_wanted.get(key)}"
                for key in sorted(set(flat_saved) | set(flat_wanted))
                if flat_saved.get(key) != flat_wanted.get(key)
            ]
            raise TrainingError(
                f"{resume_path} was trained with other model flags ({'; '.join(differ)}); resume with the same model "
                "flags (they are in config.json)"
            )
        saved_processes, processes = state.get("num_processes"), self.accelerator.num_processes
        if self.accelerator.state.deepspeed_plugin is not None and saved_processes not in (None, processes):
            raise TrainingError(
                f"{resume_path} was written by {saved_processes} DeepSpeed processes and this launch has {processes}: "
                f"ZeRO checkpoints are sharded per process, so resume with --num_processes {saved_processes}"
            )

    def _resume(self, resume_path: Path) -> int:
        state = self.resume_state
        self.accelerator.load_state(str(resume_path))
        self.ema.load_state_dict(load_file(resume_path / EMA_NAME))
        if self.main_process:
            for name in ("train.jsonl", "validation.jsonl"):
                trim_jsonl(self.output_dir / "logs" / name, state["step"])
            print(f"resumed from {resume_path} at step {state['step']}", file=sys.stderr)
            if Path(resume_path).resolve().parent != self.checkpoint_dir.resolve():
                print(
                    f"note: {resume_path} is a checkpoint of another run; this run ({self.output_dir}) continues from "
                    "its weights, optimiser state and normalisation",
                    file=sys.stderr,
                )
        return state["step"]

    def _loader(self) -> DataLoader:
        config, accelerator = self.config, self.accelerator
        batch_sampler = StepBatchSampler(
            len(self.train_set),
            config.batch_size,
            seed=config.seed,
            rank=accelerator.process_index,
            world_size=accelerator.num_processes,
            start_micro_step=self.global_step * config.gradient_accumulation_steps,
        )
        on_gpu = accelerator.device.type == "cuda"
        workers = config.num_workers if config.num_workers is not None else (4 if on_gpu else 0)
        return DataLoader(
            self.train_set,
            batch_sampler=batch_sampler,
            num_workers=workers,
            pin_memory=on_gpu,
            persistent_workers=workers > 0,
            prefetch_factor=4 if workers else None,
        )

    def description(self, extra: dict | None = None) -> RunDescription:
        """The run's config.json: read back by ``load_model`` as the same typed description."""
        config, accelerator = self.config, self.accelerator
        return RunDescription(
            format_version=FORMAT_VERSION,
            **self._architecture(),
            normalization=self.normalization.to_dict(),
            sampler=config.sampler,
            training=config,
            step=self.global_step,
            num_processes=accelerator.num_processes,
            mixed_precision=accelerator.mixed_precision,
            compiled=accelerator.state.dynamo_plugin.backend.value != "NO",
            versions=versions(),
            setting_changes=self.setting_changes or None,
            **(extra or {}),
        )

    def loss(self, batch: dict) -> torch.Tensor:
        """The objective on one batch; noise x0 and time t come from the items' keys, on the device."""
        config, device = self.config, self.accelerator.device
        target = batch["target"].to(device, non_blocking=True)
        cond = batch["input"].to(device, non_blocking=True)
        if config.objective == "mse":
            return mse_loss(self.forward, target, cond)
        keys = batch["key"].to(device, non_blocking=True)
        noise = keyed_normal(keys, config.seed, *target.shape[1:])
        t = keyed_time(keys, config.seed, config.time_grid_points)
        if config.mean_anchor_fraction > 0:  # x = 0 at t = 0: the velocity to learn is the target itself
            anchor = keyed_fraction(keys, config.seed, config.mean_anchor_fraction, 0x3D4C2B1A)
            t = torch.where(anchor, torch.zeros_like(t), t)
            noise = torch.where(anchor.view(-1, 1, 1, 1), torch.zeros_like(noise), noise)
        if config.shortcut_fraction > 0:
            consistency = max(1, round(config.shortcut_fraction * len(keys)))
            return shortcut_loss(self.forward, noise, target, t, cond, keys, config.seed, consistency)
        return cfm_loss(self.forward, noise, target, t, cond)

    def train(self) -> None:
        config, accelerator = self.config, self.accelerator
        if config.validation_steps and self.global_step == 0:
            self.validate()
        progress = tqdm(
            total=config.max_steps, initial=self.global_step, desc="training", disable=not self.main_process
        )
        samples_per_step = config.batch_size * accelerator.num_processes * config.gradient_accumulation_steps
        window_start, window_steps = time.perf_counter(), 0
        start = self.global_step  # a resumed run's step: its checkpoint exists
        self.model.train()
        for batch in self.loader:
            if self.global_step >= config.max_steps:
                break
            with accelerator.accumulate(self.model):
                loss = self.loss(batch)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(self.model.parameters(), config.max_grad_norm)
                for group in self.optimizer.param_groups:
                    group["lr"] = learning_rate(config, self.global_step)
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
            if not accelerator.sync_gradients:
                continue
            self.global_step += 1
            window_steps += 1
            unwrapped = accelerator.unwrap_model(self.model)
            with full_parameters(accelerator, unwrapped):
                self.ema.update(unwrapped.parameters(), self.global_step)
            progress.update(1)
            if self.global_step % config.log_steps == 0 or self.global_step == config.max_steps:
                elapsed = time.perf_counter() - window_start
                self.log_training(loss, window_steps * samples_per_step / max(elapsed, 1e-9), progress)
                window_start, window_steps = time.perf_counter(), 0
            if self.global_step % config.checkpointing_steps == 0:
                self.save_checkpoint()
            if config.validation_steps and self.global_step % config.validation_steps == 0:
                self.validate()
        progress.close()
        if self.global_step % config.checkpointing_steps and self.global_step != start:
            # the last step is a checkpoint too: `latest` then resumes where the run ended, never before
            # the saved model (which a longer resume would otherwise overwrite with an older branch)
            self.save_checkpoint()

    def log_training(self, loss: torch.Tensor, samples_per_s: float, progress) -> None:
        mean_loss = self.accelerator.reduce(loss.detach().float(), reduction="mean").item()
        record = {
            "train/loss": mean_loss,
            "train/lr": learning_rate(self.config, self.global_step - 1),
            "train/samples_per_s": samples_per_s,
        }
        self.accelerator.log(record, step=self.global_step)
        if self.main_process:
            progress.set_postfix(loss=f"{mean_loss:.4f}")
            log_jsonl(self.output_dir / "logs" / "train.jsonl", {"step": self.global_step, **record})

    def save_checkpoint(self) -> None:
        """Every process writes its part into a hidden folder; once all have finished (a barrier) and
        all their files are there, the main process renames it: a kill never leaves half a checkpoint,
        and a slow process never finds its folder gone (issue 26)."""
        step, accelerator = self.global_step, self.accelerator
        tmp = checkpoints.temporary_dir(self.checkpoint_dir, step)
        if self.main_process:
            checkpoints.clean_temporary(self.checkpoint_dir)
        accelerator.wait_for_everyone()
        try:
            accelerator.save_state(str(tmp))
            failure = None
        except Exception as exc:  # a full disk surfaces as OSError, SafetensorError or torch's RuntimeError
            failure = self._write_failure(step, exc)
        failures = [f for f in gather_object([failure]) if f is not None]  # also the barrier before publishing
        if failures:
            raise TrainingError(failures[0])
        if self.main_process:
            missing = checkpoints.missing_process_files(tmp, accelerator.num_processes)
            if missing:
                failure = (
                    f"checkpoint {tmp} lacks {', '.join(missing[:4])} after every process saved: the processes "
                    f"do not share {self.output_dir} (a multi-node run needs an --output-dir on a file system "
                    "that every node mounts)"
                )
            else:
                failure = self._publish(tmp, step)
        failure = broadcast_object_list([failure])[0]  # every process stops, or none does
        if failure is not None:
            raise TrainingError(failure)

    def _publish(self, tmp: Path, step: int) -> str | None:
        """Main process: EMA weights and the completion marker into ``tmp``, rename, rotate, save the run;
        an OS error (a full disk) comes back as one line, and the previous checkpoint stays usable."""
        try:
            atomic_save_safetensors(self.ema.state_dict(), tmp / EMA_NAME)
            state = {
                "step": step,
                "num_processes": self.accelerator.num_processes,
                **self._architecture(),
                "normalization": self.normalization.to_dict(),
                "training": self.config.model_dump(mode="json"),
                "setting_changes": [c.model_dump(mode="json") for c in self.setting_changes],
            }
            atomic_write_bytes(tmp / checkpoints.COMPLETE_MARKER, json.dumps(state).encode())
            checkpoints.publish(tmp, step)
            checkpoints.rotate(self.checkpoint_dir, self.config.checkpoints_total_limit)
            save_run(self.output_dir, self.ema.state_dict(), self.description())
        except Exception as exc:
            return self._write_failure(step, exc)
        return None

    def _write_failure(self, step: int, exc: Exception) -> str:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[-1]
        return (
            f"cannot write checkpoint {step} to {self.checkpoint_dir} ({type(exc).__name__}: {reason}); earlier "
            "checkpoints are intact: free space (or fix the folder) and relaunch with --resume-from-checkpoint latest"
        )

    def validate(self) -> None:
        accelerator, step = self.accelerator, self.global_step
        if self.main_process:
            loss = validation_loss(self.ema.model, self.val_set, self.config, accelerator.device, accelerator.autocast)
            grid = validation_grid(self.ema.model, self.val_set, self.config, accelerator.device, accelerator.autocast)
            save_png(grid, self.output_dir / "samples" / f"step-{step:07d}.png")
            accelerator.log({"val/loss": loss}, step=step)
            tracker = accelerator.get_tracker("tensorboard", unwrap=True)
            tracker.add_image("val/input|target|samples|mmse|std", grid, step, dataformats="HW")
            log_jsonl(self.output_dir / "logs" / "validation.jsonl", {"step": step, "val_loss": loss})
        accelerator.wait_for_everyone()

    def finish(self) -> None:
        """Save the EMA weights with every rank's weight checksum (equal values prove the processes
        trained one model) and tear the process group down."""
        accelerator = self.accelerator
        unwrapped = accelerator.unwrap_model(self.model)
        with full_parameters(accelerator, unwrapped):
            checksum = torch.stack([sum(p.detach().double().sum() for p in unwrapped.parameters())]).to(
                accelerator.device
            )
        rank_checksums = accelerator.gather(checksum).cpu().tolist()
        failure = None
        if self.main_process:
            try:
                extra = {"rank_weight_checksums": rank_checksums}
                save_run(self.output_dir, self.ema.state_dict(), self.description(extra))
                print(
                    f"saved {self.output_dir / 'model.safetensors'} (step {self.global_step}, "
                    f"{accelerator.num_processes} process(es))",
                    file=sys.stderr,
                )
            except Exception as exc:
                failure = self._write_failure(self.global_step, exc).replace(
                    f"checkpoint {self.global_step} to {self.checkpoint_dir}", f"the model to {self.output_dir}"
                )
        failure = broadcast_object_list([failure])[0]
        if failure is not None:
            raise TrainingError(failure)
        accelerator.wait_for_everyone()
        accelerator.end_training()
        # A gloo group still alive at interpreter exit can abort ("terminate called without an active
        # exception") and fail the whole launch; so can a peer that closes its connections while this
        # process is still tearing down (seen once with two launchers as two nodes): every process
        # reaches the teardown together.
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
            torch.distributed.destroy_process_group()


def main(argv: list[str] | None = None) -> None:
    config = parse_train_config(argv, description=__doc__.split("\n")[0])
    try:
        trainer = Trainer(config)
        trainer.train()
        trainer.finish()
    except TrainingError as exc:
        # every process stops; process 0 says why (once, not once per process)
        sys.exit(f"error: {exc}" if int(os.environ.get("RANK", "0")) == 0 else 1)
