"""bioimage.io export: the package passes `bioimageio test`, matches `hazematching predict`, and its
TorchScript runs where the project is not importable."""

import io
import json
import subprocess
import sys
import zipfile

import numpy as np
import pytest
import tifffile
import yaml

from hazematching.cli import main as cli_main
from hazematching.data.io import read_split
from hazematching.export import architecture_source, receptive_radius
from hazematching.inference.predict import predict_array
from hazematching.run import load_model

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def package(trained_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "model.zip"
    cli_main(
        [
            "export",
            "--model",
            str(trained_run),
            "--output",
            str(out),
            "--samples",
            "2",
            "--steps",
            "2",
            "--test-size",
            "96",
            "--authors",
            "Test Author",
        ]
    )
    return out


def bioimageio(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "bioimageio.core", *args], capture_output=True, text=True, timeout=900, cwd=cwd
    )


def test_package_contents_and_rdf(package):
    with zipfile.ZipFile(package) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        readme = zf.read("README.md").decode()
        cover = zf.read("cover.png")
    assert {
        "rdf.yaml",
        "README.md",
        "cover.png",
        "test_input.npy",
        "test_output.npy",
        "training_config.json",
        "hazematching_torchscript.pt",
        "hazematching_state_dict.pt",
        "hazematching_architecture.py",
    } <= names
    assert rdf["format_version"].startswith("0.5") and "config" not in rdf or "deepimagej" not in rdf.get("config", {})
    assert len(rdf["inputs"]) == 1 and len(rdf["outputs"]) == 1
    out_axes = rdf["outputs"][0]["axes"]
    assert [a.get("id") for a in out_axes] == ["batch", "channel", "y", "x"]
    assert out_axes[1]["channel_names"] == ["mean", "std"] and out_axes[2]["halo"] > 0
    size = rdf["inputs"][0]["axes"][2]["size"]
    assert size["min"] % size["step"] == 0 and size["min"] > 2 * out_axes[2]["halo"]
    assert rdf["cite"][0]["doi"].endswith("2506.22397")
    for heading in ("## Description", "## Intended Use", "## Validation", "## Citation", "## Sampler"):
        assert heading in readme
    with zipfile.ZipFile(package) as zf:
        stats = json.loads(zf.read("training_config.json"))["normalization"]
    # robustness case 4: the package states the intensities the model was trained on
    assert f"mean {stats['input_mean']:.4g} and\nstandard deviation {stats['input_std']:.4g}" in readme
    assert len(cover) < 500_000
    # a run trained by this release samples in antithetic pairs, and the package says so
    assert "antithetic pairs (x0, -x0)" in rdf["description"] and "drawn in antithetic pairs" in " ".join(
        readme.split()
    )
    kwargs = rdf["weights"]["pytorch_state_dict"]["architecture"]["kwargs"]
    assert kwargs["sample_noise"] == "antithetic"


def test_bioimageio_test_passes_for_every_format(package):
    for extra in ([], ["--determinism", "full"]):
        result = bioimageio("test", str(package), *extra)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
        assert "pytorch_state_dict" in result.stdout and "torchscript" in result.stdout
        assert "❌" not in result.stdout


def test_bioimageio_predict_matches_hazematching_predict(package, trained_run, sim_data, tmp_path):
    """An odd-sized image (not a multiple of 16): bioimageio.core pads it by the halo, the model
    recognises that padding, so mean and std equal `hazematching predict` with the package's settings
    (tiles of 256 with 64 px overlap, same seed, steps, samples) to float rounding."""
    image = np.tile(read_split(sim_data / "test")[0].input, (2, 3))[:212, :300]
    tifffile.imwrite(tmp_path / "img.tif", image)
    result = bioimageio(
        "predict",
        "--inputs",
        str(tmp_path / "img.tif"),
        "--outputs",
        str(tmp_path / "out" / "{output_id}.tif"),
        str(package),
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = np.squeeze(tifffile.imread(tmp_path / "out" / "dehazed.tif"))
    assert out.shape == (2, 212, 300)
    ours = predict_array(load_model(trained_run), image, samples=2, steps=2, tile_size=256, overlap=64, progress=False)
    for got, expected in ((out[0], ours.mean), (out[1], ours.std)):
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()

    # the command a user runs: `hazematching predict --noise package` gives the package's numbers, the
    # default (noise keyed per file and plane) does not
    seed = str(load_model(trained_run).config.sampler.seed)
    for noise in ("package", "per-plane"):
        cli_main(
            ["predict", "--model", str(trained_run), "--input", str(tmp_path / "img.tif")]
            + ["--output", str(tmp_path / noise / "img.tif"), "--samples", "2", "--steps", "2", "--seed", seed]
            + ["--noise", noise, "--quiet"]
        )
    for noise, equal in (("package", True), ("per-plane", False)):
        for got, name in ((out[0], "img.tif"), (out[1], "img_std.tif")):
            cli = tifffile.imread(tmp_path / noise / name)
            assert bool(np.abs(got - cli).max() <= 1e-4 * np.abs(cli).max()) is equal, (noise, name)


@pytest.mark.parametrize("shape", [(85, 87), (88, 89)])
def test_bioimageio_predict_takes_every_size_from_the_minimum(package, sim_data, tmp_path, shape):
    """Robustness case 5: sizes that are not min + k * stride (once refused with a traceback)."""
    image = np.tile(read_split(sim_data / "test")[0].input, (2, 2))[: shape[0], : shape[1]]
    tifffile.imwrite(tmp_path / "img.tif", image)
    out = tmp_path / "out" / "{output_id}.tif"
    result = bioimageio("predict", "--inputs", str(tmp_path / "img.tif"), "--outputs", str(out), str(package))
    assert result.returncode == 0, result.stderr[-3000:]
    assert np.squeeze(tifffile.imread(tmp_path / "out" / "dehazed.tif")).shape == (2, *shape)


def test_torchscript_runs_without_the_project(package, tmp_path):
    with zipfile.ZipFile(package) as zf:
        zf.extractall(tmp_path)
    code = (
        "import sys; sys.modules['hazematching'] = None\n"
        "try:\n    import hazematching\nexcept ImportError:\n    pass\nelse:\n    raise SystemExit('project "
        "importable')\n"
        "import numpy as np, torch\n"
        "m = torch.jit.load('hazematching_torchscript.pt')\n"
        "x = torch.from_numpy(np.load('test_input.npy'))\n"
        "with torch.no_grad():\n    y = m(x).numpy()\n"
        "print(float(np.abs(y - np.load('test_output.npy')).max()))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip()) == 0.0


def test_state_dict_architecture_imports_with_torch_only(tmp_path, trained_run):
    source = architecture_source()
    assert "from ." not in source
    imports = {line.split()[1].split(".")[0] for line in source.splitlines() if line.startswith(("import ", "from "))}
    assert imports <= {"torch", "math", "collections", "dataclasses", "typing"}  # torch + standard library
    (tmp_path / "arch.py").write_text(source)
    code = "import sys; sys.modules['hazematching'] = None; import arch; print(arch.Dehazer)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert receptive_radius(load_model(trained_run).model) > 0


def test_export_refuses_baseline_and_bad_formats(baseline_run, trained_run, tmp_path):
    with pytest.raises(SystemExit, match="baseline"):
        cli_main(["export", "--model", str(baseline_run), "--output", str(tmp_path / "m.zip")])
    with pytest.raises(SystemExit, match="choose from"):
        cli_main(["export", "--model", str(trained_run), "--output", str(tmp_path / "m.zip"), "--formats", "onnx"])
    assert not list(tmp_path.iterdir())


def _test_output(package) -> bytes:
    with zipfile.ZipFile(package) as zf:
        return zf.read("test_output.npy")


def test_same_seed_gives_identical_package_outputs_other_seed_differs(package, trained_run, tmp_path):
    common = [
        "export",
        "--model",
        str(trained_run),
        "--samples",
        "2",
        "--steps",
        "2",
        "--test-size",
        "96",
        "--authors",
        "Test Author",
    ]
    cli_main([*common, "--output", str(tmp_path / "again.zip")])
    cli_main([*common, "--output", str(tmp_path / "seed7.zip"), "--seed", "7"])
    assert _test_output(tmp_path / "again.zip") == _test_output(package)
    other = np.load(io.BytesIO(_test_output(tmp_path / "seed7.zip")))
    same = np.load(io.BytesIO(_test_output(package)))
    assert np.abs(other - same).max() > 1e-3


def test_export_bad_input_is_refused_without_leftovers(trained_run, tmp_path):
    base = ["export", "--model", str(trained_run), "--test-size", "96"]
    out = tmp_path / "out"
    out.mkdir()
    for extra, message in ((["--steps", "0"], "--steps 0"), (["--samples", "0"], "--samples 0")):
        with pytest.raises(SystemExit, match=message):
            cli_main([*base, "--output", str(out / "m.zip"), *extra])
    with pytest.raises(SystemExit, match="end in .zip"):
        cli_main([*base, "--output", str(out / "m.yaml")])
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match="cannot create the output folder"):
        cli_main([*base, "--output", str(blocker / "m.zip")])
    no_weights = tmp_path / "run_without_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((trained_run / "config.json").read_text())
    with pytest.raises(SystemExit, match="no model.safetensors"):
        cli_main(["export", "--model", str(no_weights), "--output", str(out / "m.zip")])
    assert not list(out.iterdir())


def test_relative_imports_are_dropped_however_they_are_written():
    from hazematching.export.package import strip_relative_imports

    source = (
        "import torch\nfrom .tiles import (\n    OVERLAP,\n    TILE_SIZE,\n)\nfrom . import noise\n"
        "from typing import List\n\ndef f():\n    from .unet import UNet\n    return UNet\n"
    )
    stripped = strip_relative_imports(source)
    assert "from ." not in stripped.split("def f")[0] and "OVERLAP" not in stripped
    assert "import torch" in stripped and "from typing import List" in stripped
    assert "    from .unet import UNet" in stripped  # only module-level imports are the concatenation's business
    compile(stripped, "arch.py", "exec")


def test_the_package_readme_says_how_the_anchor_mmse_was_made_and_whether_tune_chose_it(trained_run):
    """An anchor MMSE in a package names what trained it and, from the run's tune result, whether
    tune recommended it; a samples' mean says so."""
    from hazematching.export.documentation import mmse_detail
    from hazematching.run import SamplerRecommendation, load_model
    from hazematching.settings import resolve_settings

    config = load_model(trained_run).config
    anchor, samples = resolve_settings(config, mmse="anchor"), resolve_settings(config, mmse="samples")
    independent = resolve_settings(config, mmse="samples", sample_noise="independent")
    assert mmse_detail(config, independent) == "the mean (the MMSE) and standard deviation over the samples"
    assert "drawn in antithetic pairs" in mmse_detail(config, samples)  # a run trained by this release
    text = mmse_detail(config, anchor)
    assert "not a separately trained output" in text and "tune" not in text
    refused = SamplerRecommendation(
        solver="euler", steps=2, samples=2, psnr_delta=0.0, ms3im_delta=None, speedup=10.0, data="val",
        mmse="samples", mmse_psnr_delta=0.14, mmse_absolute_psnr_delta=-2.77,
    )  # fmt: skip
    text = mmse_detail(config.model_copy(update={"recommended_sampler": refused}), anchor)
    assert "did not recommend it" in text and "-2.77 dB absolute PSNR" in text
    # the samples' mean says that tune measured the anchor too and kept the mean
    text = mmse_detail(config.model_copy(update={"recommended_sampler": refused}), samples)
    assert "kept the samples' mean: the prediction scored +0.14 dB PSNR and -2.77 dB absolute PSNR" in text
    chosen = refused.model_copy(update={"mmse": "anchor", "mmse_absolute_psnr_delta": 0.66})
    training = config.training.model_copy(update={"mean_anchor_fraction": 0.5})
    text = mmse_detail(config.model_copy(update={"recommended_sampler": chosen, "training": training}), anchor)
    assert "trained to give it there on 50%" in text and "tune` on `val` chose it" in text


def test_the_package_readme_says_when_its_calibration_was_fitted_with_other_settings(trained_run):
    """Export warns on the console when the calibration's K, N, solver or sample noise differ from the
    package's; the README, which outlives the console, says so too instead of promising a match."""
    from hazematching.export.documentation import calibrated_detail
    from hazematching.run import Calibration, load_model
    from hazematching.settings import resolve_settings

    config = load_model(trained_run).config
    settings = resolve_settings(config, samples=4, steps=2, solver="euler")
    assert "not calibrated" in calibrated_detail(config, settings)
    fit = Calibration(scale=1.5, offset=0.1, settings=settings.model_dump())
    calibrated = config.model_copy(update={"calibration": fit})
    assert "so that it matches the observed error" in calibrated_detail(calibrated, settings)
    other = calibrated_detail(calibrated, settings.model_copy(update={"samples": 8}))
    assert "fitted with K = 4" in other and "this package uses K = 8" in other and "may not match" in other
