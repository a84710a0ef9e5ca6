"""An imported run of the paper's network (issue 23, "What must hold"): our sampler is the paper's Euler
loop, its tiled MMSE has no seams, and every command downstream takes it unchanged.

The run is ``neuron_run`` (tests/conftest.py): torchcfm's P = 64 network with perturbed weights, saved as
the paper's train.py saves it and imported with ``--dataset neuron``."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from scipy.ndimage import gaussian_filter

from hazematching.cli import main as cli_main
from hazematching.core.sampler import ODESampler
from hazematching.core.tiles import fit_multiple, window
from hazematching.inference.predict import predict_array
from hazematching.inference.tiling import tiles
from hazematching.paper.releases import get
from hazematching.run import load_model

NEURON = get("neuron").normalisation["all"]
REPO = Path(__file__).resolve().parents[2]


def widefield(shape, seed=0) -> np.ndarray:
    """Smooth blobs (gaussian-blurred noise, not white noise) at the Neuron inputs' intensities."""
    blobs = gaussian_filter(np.random.default_rng(seed).random(shape), 4)
    blobs = (blobs - blobs.mean()) / blobs.std()
    return (NEURON.input_mean + 0.8 * NEURON.input_std * blobs).astype(np.float32)


def test_our_euler_sampler_is_the_papers_loop(neuron_like, neuron_run):
    """Euler on linspace(0, 1, 20) (19 steps) as the paper's infer.py runs it, from the same noise."""
    reference, _ = neuron_like
    run = load_model(neuron_run)
    assert (run.config.sampler.solver, run.config.sampler.steps) == ("euler", 19)
    generator = torch.Generator().manual_seed(5)
    x0, cond = torch.randn(2, 1, 1, 64, 64, generator=generator)  # one 64 x 64 image
    with torch.no_grad():
        ours = ODESampler(run.model, 1, "euler").integrate(x0, cond, run.config.sampler.steps)
        ts = torch.linspace(0, 1, 20)
        x = x0
        for i in range(len(ts) - 1):
            x = x + (ts[i + 1] - ts[i]) * reference(ts[i], torch.cat([x, cond], dim=1))
    assert (x - x0).abs().max() > 0.1  # the network moved the state
    assert ((ours - x).abs().max() / x.abs().max()).item() <= 1e-5


# seams: the mean |difference| of neighbouring rows (columns) across the boundaries where one tile's kept
# region meets the next, against the same measure over every other pair of neighbouring rows (columns)

HEIGHT, WIDTH = 300, 451


def kept_boundaries(run, height: int, width: int, tile_size: int, overlap: int) -> tuple[list[int], list[int]]:
    """First rows/columns of every kept region but the first, tiled exactly as ``predict_array`` tiles."""
    stride = run.model.stride
    tile_size, overlap = window(tile_size, overlap, stride)
    all_tiles, _, _ = tiles(height, width, tile_size, overlap, fit_multiple(run.model, stride))
    return sorted({t.y.keep_start for t in all_tiles} - {0}), sorted({t.x.keep_start for t in all_tiles} - {0})


def seam_ratios(image: np.ndarray, rows: list[int], columns: list[int]) -> tuple[float, float]:
    """(rows, columns): the mean |difference| across the boundaries over the mean |difference| inside."""

    def ratio(differences: np.ndarray, boundaries: list[int]) -> float:
        at = np.zeros(len(differences), bool)
        at[[b - 1 for b in boundaries]] = True  # differences[i] = |image[i + 1] - image[i]|
        return float(differences[at].mean() / differences[~at].mean())

    return (
        ratio(np.abs(np.diff(image, axis=0)).mean(axis=1), rows),
        ratio(np.abs(np.diff(image, axis=1)).mean(axis=0), columns),
    )


@pytest.fixture(scope="module")
def seam_image() -> np.ndarray:
    return widefield((HEIGHT, WIDTH), seed=1)


@pytest.mark.slow
def test_the_tiled_mmse_has_no_seams(neuron_run, seam_image):
    """The run's own tiling (tiles of P = 64 overlapping by P / 4, cross-faded) on a 300 x 451 image.

    The network's output layer is scaled x8 so that the network, not the starting noise (keyed on
    image coordinates and so seamless by construction), dominates the K = 1, N = 2 MMSE. Cutting at
    the middle of each overlap instead (the kept regions our U-Net uses) shows the attention's
    different context in neighbouring windows as seams, so the test can fail (measured 1.14 / 1.12;
    cross-faded 0.93 / 0.96)."""
    run = load_model(neuron_run)
    with torch.no_grad():
        run.model.out[2].weight.mul_(8.0)
        run.model.out[2].bias.mul_(8.0)
    tile_size, overlap = run.config.sampler.tile_size, run.config.sampler.overlap
    assert (tile_size, overlap) == (64, 16)
    rows, columns = kept_boundaries(run, HEIGHT, WIDTH, tile_size, overlap)
    assert len(rows) >= 4 and len(columns) >= 8
    mmse = predict_array(run, seam_image, samples=1, steps=2, seed=0, progress=False, compile="off").mean
    ratios = seam_ratios(mmse, rows, columns)
    assert all(abs(r - 1) <= 0.1 for r in ratios), f"seam ratio (rows, columns) {ratios} at P/4 overlap"

    run.model.fixed_window = False  # the kept-region cut, at the same tiles
    run.fast.clear()
    rows, columns = kept_boundaries(run, HEIGHT, WIDTH, tile_size, overlap)
    cut = predict_array(run, seam_image, samples=1, steps=2, seed=0, progress=False, compile="off").mean
    assert max(seam_ratios(cut, rows, columns)) > 1.1


def test_the_seam_measure_sees_seams(seam_image):
    """The measure can fail: the smooth test image with every other tile's kept region shifted by 3 px
    (a checkerboard of misplaced tiles), cut by the run's tiling, has seams at every boundary."""
    all_tiles, _, _ = tiles(HEIGHT, WIDTH, 64, 16, 0)
    rows = sorted({t.y.keep_start for t in all_tiles} - {0})
    columns = sorted({t.x.keep_start for t in all_tiles} - {0})
    assert all(abs(r - 1) <= 0.1 for r in seam_ratios(seam_image, rows, columns))  # no seams of its own
    shifted = seam_image.copy()
    moved = np.roll(seam_image, (3, 3), axis=(0, 1))
    starts_y, starts_x = [0, *rows], [0, *columns]
    for t in all_tiles:
        if (starts_y.index(t.y.keep_start) + starts_x.index(t.x.keep_start)) % 2:
            shifted[t.kept()] = moved[t.kept()]
    ratios = seam_ratios(shifted, rows, columns)
    assert all(r > 1.1 for r in ratios), f"seam ratio (rows, columns) {ratios} of misplaced tiles"


# everything downstream on the imported run: small images, K = 1-2, N = 2


def write_pairs(folder: Path, count: int, size: int = 64) -> Path:
    """Paired 2-channel TIFFs: channel 0 the confocal target, channel 1 the widefield input."""
    folder.mkdir(parents=True)
    for i in range(count):
        image = widefield((size, size), seed=10 + i)
        blobs = widefield((size, size), seed=20 + i)  # a target that is not the input rescaled
        target = (NEURON.target_mean + 0.2 * NEURON.target_std * (blobs - blobs.mean()) / blobs.std()).astype(
            np.float32
        )
        tifffile.imwrite(folder / f"pair_{i}.tif", np.stack([target, image]))
    return folder


def test_predict_a_2d_image_and_a_stack(neuron_run, tmp_path):
    image = tmp_path / "image.tif"
    tifffile.imwrite(image, widefield((64, 80)))  # two tiles of 64
    stack = tmp_path / "stack.tif"
    tifffile.imwrite(stack, np.stack([widefield((64, 64), seed=s) for s in (2, 3)]), metadata={"axes": "ZYX"})
    sampler = ["--samples", "2", "--steps", "2", "--quiet", "--device", "cpu"]
    cli_main(
        ["predict", "--model", str(neuron_run), "--input", str(image), "--output", str(tmp_path / "b.tif"), *sampler]
    )
    cli_main(
        ["predict", "--model", str(neuron_run), "--input", str(stack), "--output", str(tmp_path / "z.tif"), *sampler]
    )
    out = tifffile.imread(tmp_path / "b.tif")
    assert out.shape[-2:] == (64, 80) and np.isfinite(out).all() and out.std() > 0
    with tifffile.TiffFile(tmp_path / "z.tif") as tif:
        planes = tif.asarray()
    assert planes.shape[-3:] == (2, 64, 64) and np.isfinite(planes).all()


def test_evaluate_and_calibrate(neuron_run, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(neuron_run, run_dir)
    data = write_pairs(tmp_path / "pairs", 2)
    sampler = ["--samples", "2", "--steps", "2", "--device", "cpu"]
    cli_main(["evaluate", "--model", str(run_dir), "--data", str(data), "--output", str(tmp_path / "eval"), *sampler])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert np.isfinite(metrics["mean"]["HazeMatching MMSE"]["psnr"])
    cli_main(["calibrate", "--model", str(run_dir), "--data", str(data), "--bins", "3", *sampler])
    calibration = load_model(run_dir).config.calibration
    assert calibration is not None and np.isfinite(calibration.scale)


@pytest.mark.slow
def test_tune_dry_run(neuron_run, tmp_path, capsys):
    data = write_pairs(tmp_path / "pairs", 1, size=32)  # tune always adds Euler-20: a small tile
    before = (neuron_run / "config.json").read_text()
    stored = neuron_run / "tuning" / "tune.json"  # the table of a stored recommendation stays with it
    stored.parent.mkdir(exist_ok=True)
    stored.write_text('{"data": "earlier"}')
    cli_main(["tune", "--model", str(neuron_run), "--data", str(data), "--samples", "2", "--settings", "euler:2",
              "--device", "cpu", "--dry-run"])  # fmt: skip
    out = capsys.readouterr().out
    assert "euler" in out and f"table: {neuron_run}/tuning/dry-run/tune.md" in out
    assert (neuron_run / "config.json").read_text() == before and stored.read_text() == '{"data": "earlier"}'
    assert json.loads((neuron_run / "tuning" / "dry-run" / "tune.json").read_text())["data"] == str(data)


@pytest.mark.slow
def test_export_passes_bioimageio_test(neuron_run, tmp_path):
    image = tmp_path / "test_image.tif"
    tifffile.imwrite(image, widefield((64, 64), seed=4))
    package = tmp_path / "neuron.zip"
    cli_main(["export", "--model", str(neuron_run), "--output", str(package), "--samples", "1", "--steps", "2",
              "--test-image", str(image), "--test-size", "64", "--authors", "Test Author"])  # fmt: skip
    executable = Path(sys.executable).parent / "bioimageio"
    command = [str(executable)] if executable.exists() else [sys.executable, "-m", "bioimageio.core"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    result = subprocess.run([*command, "test", str(package)], capture_output=True, text=True, timeout=600, env=env)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "❌" not in result.stdout


def test_napari_engine_takes_an_imported_run(neuron_run):
    """The napari widget's engine (no Qt) pre-fills the run's tiling and sampler and dehazes a layer
    with predict_array's numbers."""
    from hazematching.inference.experiment.schedule import plane_seed
    from hazematching.napari import engine

    model = engine.load(neuron_run)
    settings = model.defaults().settings
    assert (settings.tile_size, settings.overlap, settings.solver, settings.steps) == (64, 16, "euler", 19)
    layer = widefield((80, 72), seed=3)
    result = engine.dehaze(model, layer, "layer.tif", {"samples": 1, "steps": 2})
    expected = predict_array(
        load_model(neuron_run), layer, samples=1, steps=2, seed=plane_seed(0, engine.DEFAULT_NOISE, "layer.tif", 0)
    )
    np.testing.assert_allclose(result.mean, expected.mean, rtol=1e-5, atol=1e-3)
    assert result.std.shape == layer.shape and np.isfinite(result.std).all()
