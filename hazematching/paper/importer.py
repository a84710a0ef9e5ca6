"""``hazematching reference import``: a released ``best_model.pth`` as a normal run folder.

The file is recognised by its sha256 (``releases.by_sha256``), loaded with ``weights_only=True`` and
checked key by key and shape by shape against the reference network before anything is written;
the run then holds the weights as safetensors and a ``config.json`` with the network, the data
set's normalisation, the tile size P it was trained at and the paper's sampler (Euler on the
20-point grid, i.e. 19 steps). Everything downstream (predict, tune, calibrate, export, napari,
``--init-from``) takes it like any run.
"""

import re
from pathlib import Path

import torch

from hazematching.architecture import ReferenceArchitecture
from hazematching.config import SamplerConfig, TrainConfig
from hazematching.paper.download import sha256_of
from hazematching.paper.releases import Normalisation, Release, by_sha256, get
from hazematching.run import (
    FORMAT_VERSION,
    ImportedCheckpoint,
    NormalizationStats,
    RunDescription,
    RunError,
    save_run,
    versions,
)

PAPER_STEPS = 19  # Euler on linspace(0, 1, 20), the grid the released networks were trained on
PAPER_TIME_GRID = 20


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A ``torch.save``d state dict, unpickled with ``weights_only=True`` (no code runs)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise RunError(f"{path}: no such file") from None
    except Exception as exc:  # truncated zip, foreign pickle, not a torch file: many types
        raise RunError(f"{path}: {_unreadable(path, exc)}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]  # a Lightning-style wrapper around the same weights
    if (
        not isinstance(state, dict)
        or not state
        or not all(isinstance(key, str) and isinstance(value, torch.Tensor) for key, value in state.items())
    ):
        raise RunError(f"{path}: holds a {type(state).__name__}, not a state dict (names -> tensors)")
    if all(key.startswith("module.") for key in state):  # saved from a DistributedDataParallel wrapper
        state = {key.removeprefix("module."): value for key, value in state.items()}
    return state


def _unreadable(path: Path, exc: Exception) -> str:
    """Why ``torch.load(weights_only=True)`` refused a file, in one line (torch's own message runs to
    a paragraph with terminal escapes)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    if Path(path).stat().st_size == 0:
        return "the file is empty"
    if "Unsupported global" in text or "GLOBAL" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1)})" if found else ""
        return (
            f"holds pickled Python objects{what}, not only tensors, which are not loaded for safety (weights_only); "
            "save the network's state dict instead: torch.save(model.state_dict(), PATH)"
        )
    return "not a PyTorch file written by torch.save, or a damaged or truncated one"


def infer_architecture(state: dict[str, torch.Tensor], path: Path) -> ReferenceArchitecture:
    """The reference network's settings read off a state dict's keys and shapes (for files that are
    not one of the five releases)."""
    if "input_blocks.0.0.weight" not in state or "time_embed.0.weight" not in state:
        raise RunError(
            f"{path}: not a checkpoint of the paper's network (no input_blocks.0.0.weight / time_embed.0.weight; "
            f"first keys: {', '.join(list(state)[:3])})"
        )
    try:
        return _read_architecture(state, path)
    except RunError:
        raise
    except (KeyError, IndexError, ValueError) as exc:  # a damaged or partial layout (ValueError: pydantic's)
        what = f"no {exc.args[0]}" if isinstance(exc, KeyError) else str(exc).strip().splitlines()[0]
        raise RunError(f"{path}: the layout of the paper's network cannot be read off its keys ({what})") from None


def _read_architecture(state: dict[str, torch.Tensor], path: Path) -> ReferenceArchitecture:
    base = state["input_blocks.0.0.weight"].shape[0]
    blocks = sorted({int(m.group(1)) for key in state if (m := re.match(r"input_blocks\.(\d+)\.", key))})
    downsamples = [i for i in blocks if f"input_blocks.{i}.0.op.weight" in state]
    levels = len(downsamples) + 1
    per_level = (len(blocks) - 1 - len(downsamples)) // levels
    if per_level < 1:
        raise RunError(f"{path}: unexpected layout: no residual blocks in input_blocks")
    mults, attention, ds, i = [], [], 1, 1
    for level in range(levels):
        for _ in range(per_level):
            weight = state.get(f"input_blocks.{i}.0.out_layers.3.weight")
            if weight is None:
                raise RunError(f"{path}: unexpected layout at input_blocks.{i} (no residual block)")
            if f"input_blocks.{i}.1.qkv.weight" in state and ds not in attention:
                attention.append(ds)
            i += 1
        mults.append(int(weight.shape[0]) // base)
        if level < levels - 1:
            i, ds = i + 1, ds * 2
    return ReferenceArchitecture(
        base_channels=base,
        channel_mults=tuple(mults),
        num_res_blocks=per_level,
        attention_resolutions=tuple(attention),
        cond_channels=int(state["input_blocks.0.0.weight"].shape[1]) - int(state["out.2.weight"].shape[0]),
        in_channels=int(state["out.2.weight"].shape[0]),
        out_channels=int(state["out.2.weight"].shape[0]),
    )


def check_state_dict(state: dict[str, torch.Tensor], architecture: ReferenceArchitecture, path: Path) -> None:
    """Every key of the network present with its shape, nothing else: else one message naming them."""
    expected = {key: tuple(value.shape) for key, value in architecture.build().state_dict().items()}
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    wrong = [
        f"{key} {tuple(state[key].shape)} (expected {shape})"
        for key, shape in expected.items()
        if key in state and tuple(state[key].shape) != shape
    ]
    if missing or unexpected or wrong:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
            if keys:
                parts.append(f"{len(keys)} {label} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})")
        raise RunError(f"{path}: does not fit the paper's network {architecture.flags()}: {'; '.join(parts)}")


def import_checkpoint(
    checkpoint: Path,
    output: Path,
    dataset: str | None = None,
    source_channel: str | None = None,
    normalization: Normalisation | None = None,
    patch_size: int | None = None,
) -> RunDescription:
    """Write the run folder ``output`` for ``checkpoint``; returns its description.

    ``dataset`` names the release when the file is not one (its sha256 is unknown) and is checked
    against the file otherwise; ``source_channel`` (``ch0``/``ch1``/``ch2``) picks zebrafish's
    statistics; ``normalization`` (and ``patch_size``) describe a file of no release. Raises
    ``RunError``/``ValueError`` with one line, before writing anything."""
    checkpoint, output = Path(checkpoint), Path(output)
    if not checkpoint.is_file():
        raise RunError(f"{checkpoint}: no such file")
    if output.exists() and (not output.is_dir() or any(output.iterdir())):
        raise RunError(f"{output}: exists and is not empty; choose a new --output folder")
    digest = sha256_of(checkpoint)
    recognised = by_sha256(digest)
    named = get(dataset) if dataset is not None else None  # ValueError listing the five names
    if recognised is not None and named is not None and named != recognised:
        raise RunError(
            f"{checkpoint}: this is the released {recognised.name} checkpoint (sha256 {digest[:12]}...), not "
            f"--dataset {named.name}; leave --dataset out or give {recognised.name}"
        )
    release = recognised or named
    if release is None and normalization is None:
        raise RunError(
            f"{checkpoint}: not one of the released checkpoints (sha256 {digest[:12]}...); say which data set it "
            f"was trained on with --dataset NAME, or give its statistics with --input-mean/--input-std/"
            f"--target-mean/--target-std"
        )
    state = load_state_dict(checkpoint)
    if release is not None:
        architecture = ReferenceArchitecture(
            channel_mults=release.channel_mult, attention_resolutions=release.attention_resolutions
        )
    else:
        architecture = infer_architecture(state, checkpoint)
    check_state_dict(state, architecture, checkpoint)
    stats = normalization or _release_statistics(release, source_channel, checkpoint)
    size = patch_size or (release.patch_size if release else 16 * max(architecture.attention_resolutions or (8,)))
    if size % architecture.stride:
        raise RunError(f"--patch-size {size} must be a multiple of the network's stride {architecture.stride}")
    description = _description(
        architecture, stats, size, output, release, recognised, checkpoint, digest, source_channel
    )
    save_run(output, {key: value.float().contiguous() for key, value in state.items()}, description)
    return description


def statistics_from_flags(input_mean, input_std, target_mean, target_std) -> Normalisation | None:
    """``--input-mean/--input-std/--target-mean/--target-std`` as statistics: all four or none."""
    values = (input_mean, input_std, target_mean, target_std)
    if all(v is None for v in values):
        return None
    if any(v is None for v in values):
        raise ValueError("give all four of --input-mean, --input-std, --target-mean and --target-std, or none")
    if input_std <= 0 or target_std <= 0:
        raise ValueError(f"--input-std {input_std} and --target-std {target_std} must be positive")
    return Normalisation(target_mean=target_mean, target_std=target_std, input_mean=input_mean, input_std=input_std)


def _release_statistics(release: Release, source_channel: str | None, path: Path) -> Normalisation:
    channels = sorted(release.normalisation)
    if len(channels) == 1:
        if source_channel is not None:
            raise RunError(f"{path}: --source-channel is for zebrafish only; {release.name} has one set of statistics")
        return release.normalisation[channels[0]]
    if source_channel not in release.normalisation:
        raise RunError(
            f"{path}: {release.name} was trained with statistics per source channel: give --source-channel "
            f"{' | '.join(channels)} (the ch token in the names of the files you will dehaze)"
        )
    return release.normalisation[source_channel]


def _description(
    architecture, stats, size, output, release, recognised, checkpoint, digest, source_channel
) -> RunDescription:
    name = release.name if release else "unknown"
    training = TrainConfig(
        data=Path(f"data/{name}"),  # the authors' folder; the paper's training, as their train.py ran it
        output_dir=output,
        model=architecture,
        crop_size=size,
        batch_size=16,
        lr=1e-4,
        seed=42,
        time_grid_points=PAPER_TIME_GRID,
        sampler=SamplerConfig(steps=PAPER_STEPS, solver="euler", tile_size=size, sample_noise="independent"),
    )
    return RunDescription(
        format_version=FORMAT_VERSION,
        objective="cfm",
        architecture=training.model,
        normalization=NormalizationStats(
            input_mean=stats.input_mean,
            input_std=stats.input_std,
            target_mean=stats.target_mean,
            target_std=stats.target_std,
        ),
        sampler=training.sampler,
        training=training,
        step=0,
        versions=versions(),
        imported=ImportedCheckpoint(
            file=str(checkpoint.resolve()),
            sha256=digest,
            release=release.name if release else None,
            verified=recognised is not None,
            source_channel=source_channel,
            url=recognised.checkpoint_url if recognised else None,
        ),
    )
