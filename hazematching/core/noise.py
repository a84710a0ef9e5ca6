"""Counter-based Gaussian noise keyed on (seed, sample index, channel, global pixel position).

Why not ``torch.randn``: the global RNG differs between CPU and CUDA, is seeded once (or never) by
bioimage.io consumers, and gives different noise to overlapping tiles of one image. A hash of
integer coordinates is identical on every device, traceable to TorchScript, and makes a tile's noise
the same as the corresponding crop of the whole image's noise.

All integer arithmetic stays in int64 below 2**50, so nothing overflows and the results are exact
on every backend.
"""

import math

import torch


def _mul32(x: torch.Tensor, c: int) -> torch.Tensor:
    """(x * c) mod 2**32 for 0 <= x, c < 2**32 without int64 overflow."""
    hi = ((x >> 16) * c) & 0xFFFF
    lo = (x & 0xFFFF) * c
    return ((hi << 16) + lo) & 0xFFFFFFFF


def hash32(x: torch.Tensor) -> torch.Tensor:
    """The 'lowbias32' integer hash (C. Wellons) on int64 tensors holding uint32 values."""
    x = x & 0xFFFFFFFF
    x = x ^ (x >> 16)
    x = _mul32(x, 0x7FEB352D)
    x = x ^ (x >> 15)
    x = _mul32(x, 0x846CA68B)
    x = x ^ (x >> 16)
    return x


def _scalar_hash(value: int) -> int:
    return int(hash32(torch.tensor([value & 0xFFFFFFFF], dtype=torch.int64))[0].item())


def hash_normal(
    seed: int,
    sample_index: int,
    batch: int,
    channels: int,
    height: int,
    width: int,
    origin_y: torch.Tensor | None = None,
    origin_x: torch.Tensor | None = None,
    device: torch.device = torch.device("cpu"),  # noqa: B008 (TorchScript needs a literal default)
) -> torch.Tensor:
    """Standard-normal noise of shape (batch, channels, height, width), float32.

    ``origin_y``/``origin_x`` (int64, shape (batch,)) give each batch item's position in a larger
    image, so a tile gets exactly the noise of that region of the whole image. Without them every
    batch item starts at (0, 0) and therefore gets the same noise (independent images need no
    different noise to be independent samples).
    """
    key = _scalar_hash(_scalar_hash(seed) + sample_index)
    ys = torch.arange(height, dtype=torch.int64, device=device).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.int64, device=device).view(1, 1, 1, width)
    cs = torch.arange(channels, dtype=torch.int64, device=device).view(1, channels, 1, 1)
    if origin_y is not None:
        ys = ys + origin_y.to(device=device, dtype=torch.int64).view(-1, 1, 1, 1)
    if origin_x is not None:
        xs = xs + origin_x.to(device=device, dtype=torch.int64).view(-1, 1, 1, 1)
    h = hash32(cs + key)
    h = hash32(ys + h)
    h = hash32(xs + h)
    return _box_muller(h.expand(batch, channels, height, width))


def _box_muller(h: torch.Tensor) -> torch.Tensor:
    """Standard-normal float32 values from per-element uint32 hashes (two derived uniforms each)."""
    u1 = (hash32(h ^ 0x5BD1E995).double() + 1.0) / 4294967296.0  # (0, 1]
    u2 = hash32(h ^ 0x27D4EB2F).double() / 4294967296.0  # [0, 1)
    z = torch.sqrt(-2.0 * torch.log(u1)) * torch.cos((2.0 * math.pi) * u2)
    return z.float()


def _item_hash(keys: torch.Tensor, seed: int) -> torch.Tensor:
    """One uint32 per item from (seed, key); keys are int64 (bits above 32 are hashed in too)."""
    keys = keys.to(torch.int64)
    return hash32(hash32((keys & 0xFFFFFFFF) + _scalar_hash(seed)) + (keys >> 32))


def keyed_fraction(keys: torch.Tensor, seed: int, fraction: float, salt: int) -> torch.Tensor:
    """A boolean per item, True with probability ``fraction``, a function of (seed, key, salt) only: any
    split of a batch over processes, and a resume, choose the same items."""
    return hash32(_item_hash(keys, seed) ^ salt).double() / 4294967296.0 < fraction


def keyed_normal(keys: torch.Tensor, seed: int, channels: int, height: int, width: int) -> torch.Tensor:
    """Training noise x0 of shape (len(keys), channels, height, width) on ``keys.device``: item i
    depends only on (seed, keys[i]), so a resumed or multi-process run draws exactly the noise of
    an uninterrupted single-process run, and it is drawn where it is used (no host-side generator)."""
    device = keys.device
    ys = torch.arange(height, dtype=torch.int64, device=device).view(1, 1, height, 1)
    xs = torch.arange(width, dtype=torch.int64, device=device).view(1, 1, 1, width)
    cs = torch.arange(channels, dtype=torch.int64, device=device).view(1, channels, 1, 1)
    h = hash32(cs + _item_hash(keys, seed).view(-1, 1, 1, 1))
    h = hash32(ys + h)
    return _box_muller(hash32(xs + h))


def keyed_time(keys: torch.Tensor, seed: int, grid_points: int = 0) -> torch.Tensor:
    """Training time of each item, a function of (seed, key) on ``keys.device``: U[0, 1) for
    ``grid_points=0`` (the paper's choice; any step count can be used at inference) or uniform over
    the reference code's fixed grid linspace(0, 1, grid_points)."""
    u = hash32(_item_hash(keys, seed) ^ 0x2C1B3C6D).double() / 4294967296.0  # [0, 1)
    if grid_points:
        return (torch.floor(u * grid_points) / (grid_points - 1)).float()
    return u.float()
