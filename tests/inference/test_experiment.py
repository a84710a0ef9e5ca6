"""Whole experiments: stacks plane by plane, split over processes, resumable, bad files reported."""

import json
import os
import subprocess
import sys
import time

import numpy as np
import pytest
import tifffile
from conftest import REPO, accelerate_launcher, free_port, kill_tree

from hazematching.cli import main as cli_main
from hazematching.data.io import DataError, read_split
from hazematching.data.stack import open_stack
from hazematching.inference.experiment import MANIFEST_NAME, WORK_NAME, JobError, derive_seed, predict_experiment
from hazematching.inference.predict import predict_array
from hazematching.run import load_model

OPTIONS = dict(samples=2, steps=3, seed=5)


def _widefield_planes(sim_data, count, size=64):
    """Real simulated widefield crops, so the network sees what it was trained on."""
    images = [p.input for p in read_split(sim_data / "test")] + [p.input for p in read_split(sim_data / "val")]
    crops = [img[y : y + size, x : x + size] for img in images for y in (0, 64) for x in (0, 64)]
    return np.stack(crops[:count]).astype(np.uint16)


def _stacks(sim_data, folder):
    """An ImageJ TZYX hyperstack with calibration and an OME-TIFF ZYX stack."""
    folder.mkdir(parents=True, exist_ok=True)
    planes = _widefield_planes(sim_data, 7)
    tifffile.imwrite(
        folder / "timelapse.tif",
        planes[:4].reshape(2, 2, 64, 64),
        imagej=True,
        resolution=(1 / 0.1, 1 / 0.1),
        metadata={"axes": "TZYX", "spacing": 0.3, "unit": "um", "finterval": 5.0},
    )
    tifffile.imwrite(
        folder / "zstack.ome.tif",
        planes[4:7],
        ome=True,
        metadata={"axes": "ZYX", "PhysicalSizeX": 0.08, "PhysicalSizeY": 0.08, "PhysicalSizeZ": 0.25},
    )
    return folder


def _outputs(folder):
    return {p.name: tifffile.imread(p) for p in sorted(folder.glob("*.tif"))}


def _launch(args, launcher=None, **kwargs):
    cmd = (launcher or [sys.executable]) + ["-m", "hazematching", "predict", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=REPO, **kwargs
    )


def _flags(run, src, out, **options):
    flags = ["--model", str(run), "--input", str(src), "--output", str(out), "--quiet"]
    for key, value in options.items():
        flags += [f"--{key.replace('_', '-')}", str(value)]
    return flags


@pytest.mark.slow
def test_two_processes_write_exactly_the_outputs_of_one(trained_run, sim_data, tmp_path):
    src = _stacks(sim_data, tmp_path / "in")
    one = predict_experiment(trained_run, src, tmp_path / "one", progress=False, **OPTIONS)
    assert sorted(one["complete"]) == ["timelapse.tif", "zstack.ome.tif"] and one["planes"] == 7 and not one["failed"]
    launcher = accelerate_launcher("cpu_2proc.yaml", "--main_process_port", free_port())
    proc = _launch(_flags(trained_run, src, tmp_path / "two", **OPTIONS), launcher)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0, log[-3000:]
    assert "rank 0: " in log and "rank 1: " in log, log[-2000:]  # both processes did planes
    manifest = json.loads((tmp_path / "two" / MANIFEST_NAME).read_text())
    assert {k: v["status"] for k, v in manifest["files"].items()} == {
        "timelapse.tif": "complete",
        "zstack.ome.tif": "complete",
    }

    ones, twos = _outputs(tmp_path / "one"), _outputs(tmp_path / "two")
    assert (
        sorted(ones) == sorted(twos) == ["timelapse.tif", "timelapse_std.tif", "zstack.ome.tif", "zstack_std.ome.tif"]
    )
    for name in ones:
        np.testing.assert_allclose(twos[name], ones[name], rtol=1e-5, atol=1e-4 * float(np.abs(ones[name]).max()))
        assert np.isfinite(ones[name]).all() and ones[name].std() > 0

    # axes, shapes and physical sizes of the inputs
    for stem, ext, axes, shape in (
        ("timelapse", ".tif", "TZYX", (2, 2, 64, 64)),
        ("zstack", ".ome.tif", "ZYX", (3, 64, 64)),
    ):
        source = open_stack(src / f"{stem}{ext}")
        for suffix in ("", "_std"):
            out = open_stack(tmp_path / "two" / f"{stem}{suffix}{ext}")
            assert (out.axes, out.shape, out.pixel_sizes) == (axes, shape, source.pixel_sizes)
    assert open_stack(tmp_path / "one" / "timelapse.tif").pixel_sizes.time_interval == 5.0

    # plane (t=1, z=0) is predict_array on that plane with the noise of (seed, file, plane index)
    plane = tifffile.imread(src / "timelapse.tif")[1, 0].astype(np.float32)
    expected = predict_array(
        load_model(trained_run),
        plane,
        progress=False,
        **{**OPTIONS, "seed": derive_seed(OPTIONS["seed"], "timelapse.tif", 2)},
    )
    np.testing.assert_array_equal(ones["timelapse.tif"][1, 0], expected.mean)
    np.testing.assert_array_equal(ones["timelapse_std.tif"][1, 0], expected.std)


KILLED_OPTIONS = dict(samples=4, steps=12, seed=1)


@pytest.fixture(scope="module")
def three_stacks_and_their_outputs(trained_run, sim_data, tmp_path_factory):
    """Three 4-plane stacks and what one uninterrupted process makes of them (read-only for the tests)."""
    folder = tmp_path_factory.mktemp("three_stacks")
    src = folder / "in"
    src.mkdir()
    planes = _widefield_planes(sim_data, 12)
    for i in range(3):
        tifffile.imwrite(src / f"field{i}.tif", planes[4 * i : 4 * i + 4], imagej=True, metadata={"axes": "ZYX"})
    reference = predict_experiment(trained_run, src, folder / "reference", progress=False, **KILLED_OPTIONS)
    assert reference["planes"] == 12
    return src, folder / "reference"


@pytest.mark.slow
@pytest.mark.parametrize("processes", [1, 2])
def test_killed_run_resumes_without_recomputing(trained_run, three_stacks_and_their_outputs, tmp_path, processes):
    """Killed (all processes at once, as a job scheduler does) and relaunched on one process."""
    src, reference = three_stacks_and_their_outputs
    options = KILLED_OPTIONS
    out = tmp_path / "out"
    launcher = accelerate_launcher("cpu_2proc.yaml", "--main_process_port", free_port()) if processes == 2 else None
    proc = _launch(_flags(trained_run, src, out, **options), launcher, start_new_session=True)
    manifest = out / MANIFEST_NAME
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if manifest.is_file() and '"complete"' in manifest.read_text():
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the job ended before it could be interrupted"
    kill_tree(proc.pid)
    proc.wait()

    status = {k: v["status"] for k, v in json.loads(manifest.read_text())["files"].items()}
    complete = [k for k, v in status.items() if v == "complete"]
    assert complete and len(complete) < 3, status
    finals = {p.name for p in out.glob("*.tif")}
    assert finals == {n for k in complete for n in (k, k.replace(".tif", "_std.tif"))}  # nothing half-written
    logged = sum(
        line.startswith("done") for log in (out / WORK_NAME).rglob("rank*.log") for line in log.read_text().splitlines()
    )
    before = {k: (out / k).stat().st_mtime_ns for k in complete}

    again = predict_experiment(trained_run, src, out, progress=False, **options)
    assert sorted(again["skipped"]) == sorted(complete)
    assert again["planes"] == 12 - 4 * len(complete) - logged  # planes of a partly done file are not redone
    assert {k: (out / k).stat().st_mtime_ns for k in complete} == before
    assert _outputs(out).keys() == _outputs(reference).keys()
    for name, array in _outputs(reference).items():
        np.testing.assert_array_equal(tifffile.imread(out / name), array)
    assert not (out / WORK_NAME).exists() and not list(out.glob(".*"))
    assert all(v["status"] == "complete" for v in json.loads(manifest.read_text())["files"].values())


def test_bad_files_are_reported_and_skipped(trained_run, sim_data, tmp_path, capsys):
    src = tmp_path / "in"
    src.mkdir()
    planes = _widefield_planes(sim_data, 4)
    two_channels = np.stack([planes[:2], planes[2:]], axis=1)  # ZCYX, the widefield in channel 1
    tifffile.imwrite(src / "good.tif", two_channels, imagej=True, metadata={"axes": "ZCYX"})
    tifffile.imwrite(src / "one_channel.tif", planes[:2], imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(src / "small.tif", planes[:2, :8], imagej=True, metadata={"axes": "ZYX"})
    tifffile.imwrite(src / "unknown.tif", planes[:2, None], photometric="minisblack", metadata=None)
    tifffile.imwrite(src / "cut.tif", two_channels, imagej=True, metadata={"axes": "ZCYX"})
    data = (src / "cut.tif").read_bytes()
    (src / "cut.tif").write_bytes(data[: len(data) * 2 // 3])
    (src / "garbage.tif").write_bytes(b"II*\x00" + bytes(100))

    with pytest.raises(SystemExit) as exit_info:
        cli_main(["predict", *_flags(trained_run, src, tmp_path / "out", samples=1, steps=2, channel=1)])
    assert exit_info.value.code == 1
    printed = capsys.readouterr().out
    assert "2 file(s) dehazed" in printed and "4 failed" in printed
    noise = json.loads((trained_run / "config.json").read_text())["sampler"]["sample_noise"]
    assert f"settings: K = 1 posterior samples ({noise} noise), euler 2 steps, 2 evaluations each, seed" in printed
    assert "MMSE: the mean of the samples; tiles of" in printed and "seeds: per-plane" in printed
    files = json.loads((tmp_path / "out" / MANIFEST_NAME).read_text())["files"]
    assert files["good.tif"]["status"] == "complete"
    # a single-channel file in a folder of paired ones is dehazed as it is, and said so (robustness
    # README, "a folder mixing paired and single-channel files"); alone it is refused (test_readers.py)
    assert files["one_channel.tif"]["status"] == "complete" and "one channel" in files["one_channel.tif"]["warning"]
    expected = {
        "small.tif": "smaller than the minimum",
        "unknown.tif": "unknown axes .* pass --axes",
        "cut.tif": "truncated",
        "garbage.tif": "cannot be read as TIFF",
    }
    for name, pattern in expected.items():
        assert files[name]["status"] == "failed" and __import__("re").search(pattern, files[name]["error"]), files[name]
        assert f"FAILED {name}" in printed
    assert sorted(p.name for p in (tmp_path / "out").glob("*.tif")) == [
        "good.tif",
        "good_std.tif",
        "one_channel.tif",
        "one_channel_std.tif",
    ]
    assert tifffile.imread(tmp_path / "out" / "good.tif").shape == (2, 64, 64)

    # --axes makes the unknown file usable
    cli_main(
        ["predict", *_flags(trained_run, src / "unknown.tif", tmp_path / "unknown", samples=1, steps=2, axes="ZYX")]
    )
    assert open_stack(tmp_path / "unknown" / "unknown.tif").axes == "ZYX"


def test_settings_are_never_mixed_and_foreign_files_never_overwritten(trained_run, sim_data, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", _widefield_planes(sim_data, 1)[0])
    out = tmp_path / "out"
    first = predict_experiment(trained_run, src, out, progress=False, samples=1, steps=2)
    assert first["complete"] == ["a.tif"]
    assert predict_experiment(trained_run, src, out, progress=False, samples=1, steps=2)["skipped"] == ["a.tif"]
    with pytest.raises(JobError, match=r"other settings:\n  a.tif: steps 2 -> 3"):
        predict_experiment(trained_run, src, out, progress=False, samples=1, steps=3)
    redone = predict_experiment(trained_run, src, out, progress=False, samples=1, steps=3, overwrite=True)
    assert redone["complete"] == ["a.tif"]
    assert json.loads((out / MANIFEST_NAME).read_text())["files"]["a.tif"]["settings"]["steps"] == 3

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "a_std.tif").write_bytes(b"someone's work")
    with pytest.raises(JobError, match="a_std.tif exists but was not written by this tool"):
        predict_experiment(trained_run, src, foreign, progress=False, samples=1, steps=2)
    assert (foreign / "a_std.tif").read_bytes() == b"someone's work"
    with pytest.raises(JobError, match="is the input folder"):
        predict_experiment(trained_run, src, src, progress=False, samples=1, steps=2)
    with pytest.raises(JobError, match="would overwrite an input"):
        predict_experiment(trained_run, src / "a.tif", src / "a.tif", progress=False, samples=1, steps=2)
    with pytest.raises(DataError, match="--axes"):
        predict_experiment(trained_run, src, out, progress=False, axes="XY")


def test_read_only_output_folder_is_a_clear_error(trained_run, sim_data, tmp_path, read_only_folder):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", _widefield_planes(sim_data, 1)[0])
    with pytest.raises(JobError, match=f"cannot write to the output folder {read_only_folder}"):
        predict_experiment(trained_run, src, read_only_folder, progress=False, samples=1, steps=1)
    with pytest.raises(JobError, match="cannot write to the output folder"):
        predict_experiment(trained_run, src, read_only_folder / "sub", progress=False, samples=1, steps=1)


def test_recursive_mirrors_the_folder_tree_and_keys_noise_on_the_path(trained_run, sim_data, tmp_path):
    src = tmp_path / "experiment"
    plane = _widefield_planes(sim_data, 1)[0]
    for well in ("plateA/well1", "plateB/well1"):  # the same image under the same file name twice
        (src / well).mkdir(parents=True)
        tifffile.imwrite(src / well / "field.tif", plane)
    tifffile.imwrite(src / "top.tif", plane)
    out = src / "dehazed"  # inside the input: its files must not become inputs on a rerun
    with pytest.raises(SystemExit, match="--recursive also looks in sub-folders"):  # plateA holds only a folder
        cli_main(["predict", *_flags(trained_run, src / "plateA", out, samples=1, steps=2)])
    result = predict_experiment(trained_run, src, out, recursive=True, progress=False, samples=2, steps=2)
    assert sorted(result["complete"]) == ["plateA/well1/field.tif", "plateB/well1/field.tif", "top.tif"]
    a, b = (tifffile.imread(out / w / "field.tif") for w in ("plateA/well1", "plateB/well1"))
    assert a.shape == plane.shape and not np.allclose(a, b)  # independent noise per file
    again = predict_experiment(trained_run, src, out, recursive=True, progress=False, samples=2, steps=2)
    assert len(again["skipped"]) == 3 and not again["complete"]  # outputs were not picked up as inputs
    assert not (out / WORK_NAME).exists()


def test_samples_of_a_stack_get_a_channel_axis(trained_run, sim_data, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(
        src / "t.tif", _widefield_planes(sim_data, 4).reshape(2, 2, 64, 64), imagej=True, metadata={"axes": "TZYX"}
    )
    predict_experiment(trained_run, src, tmp_path / "out", keep_samples=True, progress=False, samples=3, steps=2)
    samples = open_stack(tmp_path / "out" / "t_samples.tif", channel=0)
    assert (samples.axes, samples.shape) == ("TZCYX", (2, 2, 3, 64, 64))
    values, mean = tifffile.imread(tmp_path / "out" / "t_samples.tif"), tifffile.imread(tmp_path / "out" / "t.tif")
    np.testing.assert_allclose(values.mean(axis=2), mean, rtol=1e-4, atol=1e-2)
    np.testing.assert_allclose(
        values.std(axis=2), tifffile.imread(tmp_path / "out" / "t_std.tif"), rtol=1e-3, atol=1e-2
    )


def test_plane_logs_count_only_whole_lines(tmp_path):
    """A plane log read while another process is half-way through a line ("done 1" of "done 12", as a
    shared file system can show it) counts only the lines that are complete."""
    from hazematching.inference.experiment.jobs import FileJob
    from hazematching.inference.experiment.workfolder import WorkFolder

    work, job = WorkFolder(tmp_path), FileJob("a.tif", tmp_path / "a.tif", {})
    work.folder(job).mkdir()
    (work.folder(job) / "rank0.log").write_text("done 0\ndone 2\n")
    (work.folder(job) / "rank1.log").write_text("done 3\nfail 12 out of memory\ndone 1")
    done, failed = work.read_logs(job)
    assert done == {0, 2, 3} and failed == {12: "out of memory"}


def test_settings_warnings_are_given_once_per_job_not_per_plane(trained_run, sim_data, tmp_path):
    """Tiles too small for the receptive radius, or one sample (a std of 0), are properties of the
    settings: a folder of 3 planes in 2 files used to repeat the warning for every plane."""
    import warnings

    from hazematching.inference.predict import SingleSampleWarning, TileSeamWarning

    src = tmp_path / "in"
    src.mkdir()
    planes = _widefield_planes(sim_data, 2)
    tifffile.imwrite(src / "a.tif", np.stack([planes[0], planes[1]]), metadata={"axes": "ZYX"})
    tifffile.imwrite(src / "b.tif", planes[0])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict_experiment(trained_run, src, tmp_path / "out", progress=False, samples=1, steps=1, tile_size=32)
    seams = [w for w in caught if issubclass(w.category, TileSeamWarning)]
    assert len(seams) == 1 and "; use --tile-size" in str(seams[0].message)
    single = [w for w in caught if issubclass(w.category, SingleSampleWarning)]
    assert len(single) == 1 and str(single[0].message).startswith("--samples 1: the std of one posterior sample is 0")
    with warnings.catch_warnings(record=True) as caught:  # whole planes fit one tile: no seams to warn about
        warnings.simplefilter("always")
        predict_experiment(
            trained_run, src, tmp_path / "whole", progress=False, samples=2, steps=1, tile_size=256, overlap=8
        )
    assert not [w for w in caught if issubclass(w.category, (TileSeamWarning, SingleSampleWarning))]
