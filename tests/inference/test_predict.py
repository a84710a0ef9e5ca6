import json

import numpy as np
import pytest
import tifffile
import torch

from hazematching.cli import main as cli_main
from hazematching.data.demo_pair import DEMO_PAIR
from hazematching.data.io import DataError, read_split, read_two_channel
from hazematching.evaluation.metrics import psnr
from hazematching.inference.experiment import predict_experiment as predict_files
from hazematching.inference.predict import predict_array
from hazematching.run import RunError, load_model
from hazematching.settings import SettingError


@pytest.fixture(scope="module")
def big_image():
    """A 256 x 256 widefield image: several tiles at tile size 64."""
    return read_two_channel(DEMO_PAIR).input


def test_tiled_prediction_matches_whole_image_and_has_no_seams(trained_run, big_image):
    run = load_model(trained_run)
    options = dict(samples=8, steps=4, seed=3, progress=False)
    whole = predict_array(run, big_image, tile_size=512, **options)
    tiled = predict_array(run, big_image, tile_size=64, overlap=32, tiles_per_call=5, **options)
    assert psnr(torch.from_numpy(tiled.mean), torch.from_numpy(whole.mean)) >= 40
    assert psnr(torch.from_numpy(tiled.std), torch.from_numpy(whole.std)) >= 30

    # seams: the gradient across the kept-region borders relative to everywhere else, against the same
    # ratio of the whole image (the network's stride-4 grid alone gives ~1.3 at those columns)
    from hazematching.inference.tiling import spans

    borders = [s.keep_start for s in spans(256, 64, 32)][1:]
    assert len(borders) >= 4

    def border_ratio(image, borders=borders):
        gx = np.abs(np.diff(image, axis=1))  # gx[:, j] is the step between columns j and j+1
        gy = np.abs(np.diff(image, axis=0))
        across = np.concatenate([gx[:, [b - 1 for b in borders]].ravel(), gy[[b - 1 for b in borders], :].ravel()])
        mask = np.ones(255, bool)
        mask[[b - 1 for b in borders]] = False
        return across.mean() / np.concatenate([gx[:, mask].ravel(), gy[mask, :].ravel()]).mean()

    assert abs(border_ratio(tiled.mean) - border_ratio(whole.mean)) <= 0.05
    # the check can fail: tiles without overlap (warned about) have seams
    from hazematching.inference.predict import TileSeamWarning

    with pytest.warns(TileSeamWarning, match="overlapping by 0 px"):
        seamed = predict_array(run, big_image, tile_size=64, overlap=0, **options)
    edges = [s.keep_start for s in spans(256, 64, 0)][1:]
    assert border_ratio(seamed.mean, edges) > border_ratio(whole.mean, edges) + 0.2


def test_prediction_is_seeded_and_samples_match_mean(trained_run, big_image):
    run = load_model(trained_run)
    image = big_image[:80, :72]
    a = predict_array(run, image, samples=3, steps=3, seed=1, keep_samples=True, progress=False)
    b = predict_array(run, image, samples=3, steps=3, seed=1, keep_samples=True, progress=False)
    c = predict_array(run, image, samples=3, steps=3, seed=2, progress=False)
    assert np.array_equal(a.mean, b.mean) and not np.allclose(a.mean, c.mean)
    assert a.samples.shape == (3, 80, 72)
    assert np.allclose(a.samples.mean(0), a.mean, rtol=1e-4, atol=1e-2)
    assert np.allclose(a.samples.std(0), a.std, rtol=1e-3, atol=1e-2)
    # MMSE is in the target's intensity units, not normalised units
    norm = run.normalization
    assert abs(float(a.mean.mean()) - norm.target_mean) < 3 * norm.target_std


@pytest.mark.parametrize("shape", [(33, 47), (16, 300), (129, 64)])
def test_odd_sizes(trained_run, shape):
    run = load_model(trained_run)
    image = np.random.default_rng(0).random(shape).astype(np.float32) * 200 + 100
    out = predict_array(run, image, samples=2, steps=2, tile_size=64, overlap=16, progress=False)
    assert out.mean.shape == shape and out.std.shape == shape and np.isfinite(out.mean).all()


def test_cli_file_and_folder(trained_run, sim_data, tmp_path):
    pair = read_split(sim_data / "test")[0]
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", pair.input.astype(np.uint16))
    tifffile.imwrite(src / "b.tif", pair.input[None].astype(np.uint8))  # singleton channel
    cli_main(
        [
            "predict",
            "--model",
            str(trained_run),
            "--input",
            str(src / "a.tif"),
            "--output",
            str(tmp_path / "one.tif"),
            "--samples",
            "2",
            "--steps",
            "2",
            "--save-samples",
            "--device",
            "cpu",
        ]
    )
    mean = tifffile.imread(tmp_path / "one.tif")
    assert mean.dtype == np.float32 and mean.shape == pair.input.shape
    assert tifffile.imread(tmp_path / "one_samples.tif").shape == (2, *pair.input.shape)
    with tifffile.TiffFile(tmp_path / "one_std.tif") as tif:
        assert tif.is_imagej and tif.series[0].axes == "YX"
    cli_main(
        [
            "predict",
            "--model",
            str(trained_run),
            "--input",
            str(src),
            "--output",
            str(tmp_path / "out"),
            "--samples",
            "1",
            "--steps",
            "1",
        ]
    )
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "a.tif",
        "a_std.tif",
        "b.tif",
        "b_std.tif",
        "hazematching_manifest.json",
    ]


def test_channel_picks_the_widefield_of_paired_files(trained_run, sim_data, tmp_path):
    """The paper's paired layout (target, widefield) predicted with --channel 1 equals predicting the
    widefield image alone; a missing channel is a clear error."""
    paired = sorted((sim_data / "test").glob("*.tif"))[0]
    pair = read_split(sim_data / "test")[0]
    tifffile.imwrite(_write(tmp_path / "alone" / paired.name, pair.input), pair.input)  # same name: same noise
    options = dict(samples=1, steps=2, progress=False)
    predict_files(trained_run, paired, tmp_path / "from_pair.tif", channel=1, **options)
    predict_files(trained_run, tmp_path / "alone" / paired.name, tmp_path / "from_wf.tif", **options)
    np.testing.assert_array_equal(
        tifffile.imread(tmp_path / "from_pair.tif"), tifffile.imread(tmp_path / "from_wf.tif")
    )
    with pytest.raises(DataError, match="--channel 2 requested"):
        predict_files(trained_run, paired, tmp_path / "x.tif", channel=2, **options)
    with pytest.raises(DataError, match="pick the one the model was trained for with --channel"):
        predict_files(trained_run, paired, tmp_path / "x.tif", **options)


def test_baseline_run_predicts_through_the_same_path(baseline_run, sim_data):
    run = load_model(baseline_run)
    assert run.objective == "mse"
    pair = read_split(sim_data / "test")[0]
    out = predict_array(run, pair.input, progress=False)
    assert out.std is None and out.mean.shape == pair.input.shape
    with pytest.raises(SettingError, match="no samples"):
        predict_array(run, pair.input, keep_samples=True, progress=False)


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, array)
    return path


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: (d / "x.png").write_bytes(b"\x89PNG"), "not a TIFF"),
        (lambda d: _write(d / "x.tif", np.zeros((5, 64, 64), np.uint16)), "unknown axes"),
        (lambda d: _write(d / "x.tif", np.zeros((64, 64, 3), np.uint8)), "RGB"),
        (lambda d: _write(d / "x.tif", np.full((64, 64), np.nan, np.float32)), "NaN"),
        (lambda d: _write(d / "x.tif", np.zeros((8, 64), np.uint16)), "smaller than the minimum"),
    ],
)
def test_a_bad_single_file_is_an_error_and_leaves_no_output(trained_run, tmp_path, make, message):
    src = tmp_path / "in"
    src.mkdir()
    make(src)
    bad = next(src.iterdir())
    out = tmp_path / "out" / "x.tif"
    with pytest.raises(DataError, match=message):
        predict_files(trained_run, bad, out, samples=1, steps=1, progress=False)
    assert not out.exists() and not out.with_name("x_std.tif").exists()


def test_bad_run_directories(trained_run, tmp_path):
    with pytest.raises(RunError, match="no config.json"):
        load_model(tmp_path)
    broken = tmp_path / "run"
    broken.mkdir()
    (broken / "config.json").write_text((trained_run / "config.json").read_text())
    with pytest.raises(RunError, match="no model.safetensors"):
        load_model(broken)
    (broken / "model.safetensors").write_bytes((trained_run / "model.safetensors").read_bytes())
    config = json.loads((trained_run / "config.json").read_text())
    config["format_version"] = 99
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(RunError, match="format version 99"):
        load_model(broken)
    with pytest.raises(RunError, match="not calibrated"):
        predict_array(load_model(trained_run), np.ones((32, 32), np.float32), calibrated=True, progress=False)


def test_anchor_mmse_setting_is_stored_resolved_and_the_same_in_the_exported_model(trained_run, big_image, tmp_path):
    """``mmse`` stored in a run is its default everywhere settings are resolved, an explicit ``samples``
    gives back the samples' mean, and the exported model (scripted Dehazer, tiles of the image)
    computes the same MMSE and std as predict."""
    import shutil

    from hazematching.core.dehazer import Dehazer
    from hazematching.run import read_description, write_description
    from hazematching.settings import resolve_settings

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir)
    description = read_description(run_dir)
    assert "mmse" not in json.loads((trained_run / "config.json").read_text())["sampler"]
    sampler = description.sampler.model_copy(update={"mmse": "anchor"})
    write_description(run_dir, description.model_copy(update={"sampler": sampler}))
    run = load_model(run_dir)
    assert (
        resolve_settings(run.config).mmse == "anchor" and resolve_settings(run.config, mmse="samples").mmse == "samples"
    )

    image = big_image[:150, :200]
    options = dict(samples=2, steps=2, seed=5, tile_size=96, overlap=48, progress=False)
    anchor = predict_array(run, image, **options)
    plain = predict_array(run, image, mmse="samples", **options)
    assert np.array_equal(anchor.std, plain.std) and not np.allclose(anchor.mean, plain.mean)

    norm = run.normalization.to_dict()
    architecture = run.config.architecture.model_dump(mode="json")
    noise = resolve_settings(run.config).sample_noise  # the run's, as export passes it
    model = Dehazer(
        architecture, **norm, samples=2, steps=2, seed=5, tile_size=96, overlap=48, mmse="anchor", sample_noise=noise
    ).eval()
    model.sampler.net.load_state_dict(run.model.state_dict())
    with torch.no_grad():
        out = torch.jit.script(model)(torch.from_numpy(image[None, None].astype(np.float32)))[0].numpy()
    for got, expected in ((out[0], anchor.mean), (out[1], anchor.std)):
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()


def test_sampler_settings_are_refused_for_a_u_net_run_and_in_its_training_config(
    baseline_run, sim_data, tmp_path, capsys
):
    """A U-Net predicts one image: an explicit --mmse, --samples, --steps, --solver or --seed would be
    silently ignored, so each is refused in one line naming it (exit status 2), as are --save-samples
    and --calibrated; the tiling settings still apply."""
    from hazematching.config import TrainConfig
    from hazematching.settings import SettingError, describe_settings, resolve_settings

    run = load_model(baseline_run)
    assert resolve_settings(run.config).mmse == "samples"
    image = np.ones((64, 64), np.float32)
    with pytest.raises(SettingError, match="--mmse anchor: this is a U-Net baseline run"):
        predict_array(run, image, mmse="anchor", progress=False)
    with pytest.raises(SettingError, match="^--samples 16, --steps 5, --solver heun: this is a U-Net"):
        predict_array(run, image, samples=16, steps=5, solver="heun", progress=False)
    with pytest.raises(SettingError, match="^--seed 3: this is a U-Net"):
        resolve_settings(run.config, seed=3)
    assert resolve_settings(run.config, tile_size=32, overlap=8).tile_size == 32
    line = describe_settings(run.config, resolve_settings(run.config, tile_size=32, overlap=8))
    assert line == "U-Net point prediction; tiles of 32 px overlapping 8 px"
    paired = sorted((sim_data / "test").glob("*.tif"))[0]
    with pytest.raises(SystemExit) as stop:
        cli_main(
            ["predict", "--model", str(baseline_run), "--input", str(paired), "--channel", "1"]
            + ["--output", str(tmp_path / "u.tif"), "--samples", "4"]
        )
    assert stop.value.code == 2 and not (tmp_path / "u.tif").exists()
    for flags in (["--save-samples"], ["--calibrated"], ["--save-samples", "--calibrated"]):  # no samples, no std
        with pytest.raises(SettingError, match=f"^{', '.join(flags)}: this is a U-Net baseline run"):
            predict_array(run, image, keep_samples="--save-samples" in flags, calibrated="--calibrated" in flags)
        with pytest.raises(SystemExit) as stop:
            cli_main(
                ["predict", "--model", str(baseline_run), "--input", str(paired), "--channel", "1"]
                + ["--output", str(tmp_path / "u.tif"), *flags]
            )
        assert stop.value.code == 2 and not (tmp_path / "u.tif").exists()
    # every option given is named in the one line, whichever way the prediction goes
    with pytest.raises(SettingError, match="^--save-samples, --samples 4: this is a U-Net"):
        predict_array(run, image, keep_samples=True, samples=4, progress=False)
    with pytest.raises(SettingError, match="^--samples-per-call 2: this is a U-Net"):
        predict_array(run, image, samples_per_call=2, progress=False)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:  # a folder goes through the experiment runner
        cli_main(
            ["predict", "--model", str(baseline_run), "--input", str(sim_data / "test"), "--channel", "1"]
            + ["--output", str(tmp_path / "folder"), "--save-samples", "--samples", "4", "--noise", "package"]
        )
    message = capsys.readouterr().err
    assert stop.value.code == 2 and not (tmp_path / "folder").exists()
    assert "error: --save-samples, --samples 4, --noise package: this is a U-Net baseline run" in message
    with pytest.raises(ValueError, match="--sampler-mmse anchor needs --objective cfm"):
        TrainConfig(data=sim_data, output_dir=sim_data, objective="mse", sampler={"mmse": "anchor"})
    with pytest.raises(ValueError, match="finite number"):
        TrainConfig(data=sim_data, output_dir=sim_data, mean_anchor_fraction=float("nan"))


def test_a_negative_calibration_offset_never_gives_a_negative_std(trained_run, tmp_path):
    """a * std + b with b < 0 would be negative where the std is small: predict and the exported
    model clip it at 0 and agree."""
    import shutil

    from hazematching.core.dehazer import Dehazer
    from hazematching.run import Calibration, read_description, write_description

    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    run = load_model(run_dir)
    image = np.random.default_rng(0).uniform(50, 150, (64, 64)).astype(np.float32)
    plain = predict_array(run, image, samples=2, steps=2, seed=1, progress=False)
    offset = -float(np.median(plain.std))  # half the pixels would go negative
    description = read_description(run_dir)
    write_description(run_dir, description.model_copy(update={"calibration": Calibration(scale=1.0, offset=offset)}))
    run = load_model(run_dir)
    calibrated = predict_array(run, image, samples=2, steps=2, seed=1, calibrated=True, progress=False)
    assert calibrated.std.min() == 0 and (calibrated.std == 0).mean() >= 0.4
    assert np.allclose(calibrated.std, np.maximum(plain.std + offset, 0), atol=1e-4 * plain.std.max())
    norm = run.normalization.to_dict()
    architecture = run.config.architecture.model_dump(mode="json")
    noise = run.config.sampler.sample_noise  # the run's, as export passes it
    model = Dehazer(architecture, **norm, samples=2, steps=2, seed=1, std_offset=offset, sample_noise=noise).eval()
    model.sampler.net.load_state_dict(run.model.state_dict())
    with torch.no_grad():
        out = model(torch.from_numpy(image[None, None].astype(np.float32)))[0, 1].numpy()
    assert out.min() == 0 and (out == 0).mean() >= 0.4


def test_a_u_net_run_predicts_files_through_the_experiment_runner(baseline_run, sim_data, tmp_path):
    """The runner's plan holds no sampler settings for a U-Net: it writes the one prediction, equal
    to predict_array's, and no std."""
    paired = sorted((sim_data / "test").glob("*.tif"))[0]
    result = predict_files(baseline_run, paired, tmp_path / "unet.tif", channel=1, progress=False)
    assert result["failed"] == {} and not (tmp_path / "unet_std.tif").exists()
    expected = predict_array(load_model(baseline_run), read_two_channel(paired).input, progress=False).mean
    assert np.allclose(tifffile.imread(tmp_path / "unet.tif"), expected, atol=1e-5 * np.abs(expected).max())


def test_antithetic_samples_predict_as_the_exported_model_and_are_stored_per_run(trained_run, tmp_path):
    """--sample-noise antithetic: predict and the exported model (TorchScript) give the same mean and
    std; the first sample is the independent one, the mean differs. A run trained by this release
    stores antithetic; a config.json without the field (earlier releases) samples independently,
    and an explicit value overrides either."""
    import shutil

    from hazematching.core.dehazer import Dehazer
    from hazematching.run import read_description, write_description
    from hazematching.settings import resolve_settings

    run = load_model(trained_run)
    image = np.random.default_rng(1).uniform(50, 150, (64, 64)).astype(np.float32)
    options = dict(samples=4, steps=2, seed=2, progress=False, keep_samples=True)
    pairs = predict_array(run, image, sample_noise="antithetic", **options)
    plain = predict_array(run, image, sample_noise="independent", **options)
    assert np.array_equal(pairs.samples[0], plain.samples[0]) and not np.allclose(pairs.mean, plain.mean)
    norm = run.normalization.to_dict()
    architecture = run.config.architecture.model_dump(mode="json")
    model = Dehazer(architecture, **norm, samples=4, steps=2, seed=2, sample_noise="antithetic").eval()
    model.sampler.net.load_state_dict(run.model.state_dict())
    scripted = torch.jit.script(model)
    with torch.no_grad():
        out = scripted(torch.from_numpy(image[None, None]))[0].numpy()
    for got, expected in ((out[0], pairs.mean), (out[1], pairs.std)):
        assert np.abs(got - expected).max() <= 1e-4 * np.abs(expected).max()

    assert json.loads((trained_run / "config.json").read_text())["sampler"]["sample_noise"] == "antithetic"
    assert np.array_equal(predict_array(run, image, **options).mean, pairs.mean)  # the run's default
    run_dir = tmp_path / "run"
    shutil.copytree(trained_run, run_dir, ignore=shutil.ignore_patterns("checkpoints"))
    data = json.loads((run_dir / "config.json").read_text())
    del data["sampler"]["sample_noise"]  # as an earlier release wrote it
    (run_dir / "config.json").write_text(json.dumps(data))
    older = load_model(run_dir)
    assert resolve_settings(older.config).sample_noise == "independent"
    assert resolve_settings(older.config, sample_noise="antithetic").sample_noise == "antithetic"
    assert np.array_equal(predict_array(older, image, **options).mean, plain.mean)
    write_description(run_dir, read_description(run_dir))  # rewritten (calibrate, tune): still without it
    assert "sample_noise" not in json.loads((run_dir / "config.json").read_text())["sampler"]


def test_a_calibration_fitted_before_sample_noise_existed_warns_for_antithetic_samples():
    """Fits of earlier releases record no sample noise: they were made with independent samples, so
    predicting antithetic pairs with them is named as a mismatch, with the flag that refits."""
    from hazematching.run import Calibration
    from hazematching.settings import InferenceSettings

    fit = Calibration(scale=1.2, offset=0.0, settings={"samples": 4, "steps": 2, "solver": "euler"})
    common = dict(samples=4, steps=2, seed=0, solver="euler", tile_size=256, overlap=64)
    assert fit.mismatch(InferenceSettings(**common)) is None
    problem = fit.mismatch(InferenceSettings(**common, sample_noise="antithetic"))
    assert "sample noise = independent but these predictions use" in problem and "--sample-noise antithetic" in problem
    assert "`hazematching calibrate --model RUN --data VAL_DIR " in problem  # where the fit's data is unknown
    fitted = Calibration(scale=1.2, offset=0.0, settings={"samples": 4}, fit_data="/data/val")
    refit = fitted.mismatch(InferenceSettings(**(common | {"samples": 8})), model="runs/a")
    assert refit.endswith("`hazematching calibrate --model runs/a --data /data/val --samples 8`")
