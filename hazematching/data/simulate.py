"""Physically simulated widefield/confocal pairs with microsim.

One random 3D ground truth (filaments, solid blobs and hollow cell-like shells) is rendered through
microsim's ``Widefield`` and ``Confocal`` modalities with a CCD detector (shot and read noise); the
in-focus plane of each is one 2-channel TIFF (channel 0 = confocal target, channel 1 = widefield
input), the paper's layout. Out-of-focus structures above and below the focal plane make the haze.
Every image is a pure function of (seed, image index), so a data set is reproducible for a seed.
"""

import contextlib
import importlib.util
import io
import logging
import math
import os
import tempfile
from pathlib import Path

import numpy as np

# ``hazematching simulate``'s defaults (its flags quote them; scipy, tifffile and tqdm are imported where used,
# so the command line reads these without loading them).
NUM_IMAGES, SIZE, SEED, DEPTH = 24, 256, 0, 32
VOXEL_NM = (250.0, 100.0, 100.0)  # z, y, x sampling of the ground truth and the images
INSTALL_HINT = 'pip install "hazematching[simulate]"'


def require_microsim() -> None:
    """microsim is an optional extra (it pins numpy<2 and zarr<3); say how to get it before any work."""
    if importlib.util.find_spec("microsim") is None:
        raise ImportError(f"hazematching simulate needs microsim, which is not installed: {INSTALL_HINT}")


def _add_filaments(volume: np.ndarray, rng: np.random.Generator, count: int) -> None:
    """Smooth random-walk curves (microtubule-like), rasterised at half-pixel steps."""
    nz, ny, nx = volume.shape
    points = []
    for _ in range(count):
        pos = rng.uniform([0, 0, 0], [nz, ny, nx])
        theta = rng.uniform(0, 2 * np.pi)
        tilt = rng.normal(0, 0.15)
        length = rng.uniform(0.5, 1.5) * max(ny, nx)
        for _ in range(int(length / 0.5)):
            theta += rng.normal(0, 0.04)
            tilt = np.clip(tilt + rng.normal(0, 0.02), -0.4, 0.4)
            pos = pos + 0.5 * np.array([tilt * 0.4, math.sin(theta), math.cos(theta)])
            points.append(pos.copy())
    if points:
        idx = np.round(np.array(points)).astype(int)
        keep = np.all((idx >= 0) & (idx < np.array(volume.shape)), axis=1)
        idx = idx[keep]
        np.add.at(volume, (idx[:, 0], idx[:, 1], idx[:, 2]), 1.0)


def _add_spheres(volume: np.ndarray, rng: np.random.Generator, count: int, hollow: bool) -> None:
    """Solid blobs (vesicles, nuclei) or hollow shells (cell membranes), drawn in bounding boxes."""
    nz, ny, nx = volume.shape
    scale = np.array([VOXEL_NM[0] / VOXEL_NM[1], 1.0, 1.0])  # z voxels are longer
    for _ in range(count):
        radius = rng.uniform(12, 30) if hollow else rng.uniform(2, 7)
        centre = rng.uniform([0, 0, 0], [nz, ny, nx])
        lo = np.maximum(np.floor(centre - radius / scale - 2).astype(int), 0)
        hi = np.minimum(np.ceil(centre + radius / scale + 2).astype(int), volume.shape)
        if np.any(hi <= lo):
            continue
        grids = np.meshgrid(*[np.arange(a, b) for a, b in zip(lo, hi)], indexing="ij")
        dist = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grids, centre, scale)))
        if hollow:
            shape = np.exp(-((dist - radius) ** 2) / 2.0)
        else:
            shape = 1.0 / (1.0 + np.exp((dist - radius) / 0.7))
        volume[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]] += rng.uniform(0.3, 1.0) * shape


def ground_truth(rng: np.random.Generator, size: int, depth: int) -> np.ndarray:
    """A (depth, size, size) fluorophore density with at least two structure types."""
    volume = np.zeros((depth, size, size), np.float32)
    area = (size / 256) ** 2
    _add_filaments(volume, rng, count=max(1, int(rng.integers(8, 20) * area)))
    _add_spheres(volume, rng, count=max(1, int(rng.integers(20, 60) * area)), hollow=False)
    _add_spheres(volume, rng, count=max(1, int(rng.integers(2, 6) * area)), hollow=True)
    from scipy import ndimage

    volume = ndimage.gaussian_filter(volume, 0.6)
    return volume / max(float(volume.max()), 1e-6)


def render_pair(volume: np.ndarray, seed: int, photons: float = 400.0) -> tuple[np.ndarray, np.ndarray]:
    """(confocal, widefield) in-focus planes of ``volume`` as uint16 camera images."""
    from microsim import schema as ms
    from microsim.schema.settings import CacheSettings

    logging.getLogger("microsim").setLevel(logging.WARNING)
    settings = ms.Settings(cache=CacheSettings(read=False, write=False), random_seed=seed, max_psf_radius_aus=4)
    planes = []
    for modality in (ms.Confocal(pinhole_au=0.5), ms.Widefield()):
        sim = ms.Simulation.from_ground_truth(
            volume * photons,
            scale=tuple(v / 1000 for v in VOXEL_NM),
            modality=modality,
            settings=settings,
            detector=ms.CameraCCD(qe=0.82, read_noise=4, bit_depth=16, offset=100),
        )
        with contextlib.redirect_stderr(io.StringIO()):  # microsim's own PSF progress bar
            image = np.asarray(sim.digital_image())
        planes.append(image[0, volume.shape[0] // 2])
    return planes[0].astype(np.uint16), planes[1].astype(np.uint16)


def split_counts(num_images: int) -> dict[str, int]:
    """70/15/15 train/val/test, at least one image in each split."""
    if num_images < 3:
        raise ValueError(f"--num-images must be >= 3 (one per split), got {num_images}")
    val = max(1, round(0.15 * num_images))
    test = max(1, round(0.15 * num_images))
    return {"train": num_images - val - test, "val": val, "test": test}


def simulate_dataset(
    out: Path,
    num_images: int = NUM_IMAGES,
    size: int = SIZE,
    seed: int = SEED,
    depth: int = DEPTH,
    progress: bool = True,
) -> dict[str, int]:
    """Write ``out/{train,val,test}/sim_XXXX.tif``; returns the split sizes."""
    import tifffile
    from tqdm.auto import tqdm

    if size < 32:
        raise ValueError(f"--size must be >= 32, got {size}")
    counts = split_counts(num_images)  # bad values are named before a missing extra
    require_microsim()
    out = Path(out)
    index = 0
    with tqdm(total=num_images, desc="simulating pairs", disable=not progress) as bar:
        for split, count in counts.items():
            (out / split).mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                rng = np.random.default_rng([seed, index])
                volume = ground_truth(rng, size, depth)
                confocal, widefield = render_pair(volume, seed=int(rng.integers(0, 2**31)))
                path = out / split / f"sim_{index:04d}.tif"
                fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tif.tmp")
                os.close(fd)
                tifffile.imwrite(tmp, np.stack([confocal, widefield]), metadata={"axes": "CYX"}, imagej=False)
                os.replace(tmp, path)
                index += 1
                bar.update()
    return counts
