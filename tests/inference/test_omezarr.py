"""OME-Zarr (NGFF 0.4 and 0.5) in and out of `hazematching predict`: inputs written by ome-zarr, outputs
read back by ome-zarr. Runs where zarr >= 3 and ome-zarr are installed (the modern CI environment)."""

import json
import sys
import time
import types

import numpy as np
import pytest
from conftest import accelerate_launcher, free_port, kill_tree
from test_experiment import _flags, _launch, _widefield_planes

from hazematching.data.io import DataError
from hazematching.inference.experiment import MANIFEST_NAME, WORK_NAME, JobError, derive_seed, predict_experiment
from hazematching.inference.predict import predict_array
from hazematching.run import load_model

OPTIONS = dict(samples=2, steps=3, seed=5)


def _modern():
    zarr = pytest.importorskip("zarr")
    if int(zarr.__version__.split(".")[0]) < 3:
        pytest.skip("OME-Zarr needs zarr>=3 (the simulate extra pins zarr<3)")
    pytest.importorskip("ome_zarr")
    return zarr


def _write(path, data, axes, version, scale, units, levels=1, chunks=None):
    """An OME-Zarr image as other tools write it (ome-zarr-py), with a pyramid when ``levels`` > 1."""
    from ome_zarr.format import FormatV04, FormatV05
    from ome_zarr.writer import write_image

    fmt = {"0.4": FormatV04(), "0.5": FormatV05()}[version]
    write_image(
        data,
        str(path),
        axes=axes,
        fmt=fmt,
        scale=scale,
        axes_units=units,
        scale_factors=[2] * (levels - 1),
        storage_options={"chunks": chunks or (1,) * (data.ndim - 2) + (32, 32)},
    )
    return path


def _read(path):
    """(data, axes, scale of level 0, version) through ome-zarr's reader, as a consumer sees it."""
    from ome_zarr.io import parse_url
    from ome_zarr.reader import Reader

    node = next(iter(Reader(parse_url(str(path)))()))
    scale = next(t["scale"] for t in node.metadata["coordinateTransformations"][0] if t["type"] == "scale")
    zarr = _modern()
    attrs = dict(zarr.open_group(str(path), mode="r").attrs)
    version = attrs["ome"]["version"] if "ome" in attrs else attrs["multiscales"][0]["version"]
    return np.asarray(node.data[0]), node.metadata["axes"], scale, version


def _inputs(sim_data, folder):
    planes = _widefield_planes(sim_data, 10)
    tl = _write(
        folder / "tl.ome.zarr",
        planes[:4].reshape(2, 2, 64, 64),
        "tzyx",
        "0.5",
        {"t": 5.0, "z": 0.3, "y": 0.1, "x": 0.1},
        {"t": "second", "z": "micrometer", "y": "micrometer", "x": "micrometer"},
        levels=2,
    )
    cz = np.stack([planes[4:7], planes[7:10]])  # (C, Z, Y, X): channel 1 is the widefield
    cz[0] = 0
    cz = _write(folder / "cz.ome.zarr", cz, "czyx", "0.4", {"z": 0.25, "y": 0.08, "x": 0.08}, {"y": "micrometer"})
    return tl, cz


def test_tzyx_and_czyx_images_keep_axes_scale_and_units(trained_run, sim_data, tmp_path):
    _modern()
    tl, cz = _inputs(sim_data, tmp_path / "in")
    out = tmp_path / "out"
    one = predict_experiment(trained_run, tl, out / "tl.ome.zarr", keep_samples=True, progress=False, **OPTIONS)
    assert one["complete"] == ["tl.ome.zarr"] and one["planes"] == 4
    two = predict_experiment(trained_run, cz, out, channel=1, progress=False, **OPTIONS)
    assert two["complete"] == ["cz.ome.zarr"] and two["planes"] == 3

    run = load_model(trained_run)
    # (input image, plane number in C order over the non-channel axes, its input index, its output index)
    for source, stem, number, at, out_at in ((tl, "tl", 2, (1, 0), (1, 0)), (cz, "cz", 2, (1, 2), (2,))):
        data, axes, scale, version = _read(source)
        keep = [i for i, a in enumerate(axes) if a["type"] != "channel"]
        seed = derive_seed(OPTIONS["seed"], f"{stem}.ome.zarr", number)
        expected = predict_array(run, data[at].astype(np.float32), progress=False, **{**OPTIONS, "seed": seed})
        for suffix, field in (("", "mean"), ("_std", "std")):
            got, got_axes, got_scale, got_version = _read(out / f"{stem}{suffix}.ome.zarr")
            assert got_version == version and got.dtype == np.float32
            assert got_axes == [axes[i] for i in keep]  # names, types and units
            assert got_scale == [scale[i] for i in keep]
            assert got.shape == tuple(data.shape[i] for i in keep)
            np.testing.assert_array_equal(got[out_at], getattr(expected, field))
            assert np.isfinite(got).all() and (got.reshape(-1, 64 * 64).std(axis=1) > 0).all()  # every plane written

    # the samples: a channel axis after t (NGFF order), K values per plane, their mean is the MMSE
    samples, axes, scale, _ = _read(out / "tl_samples.ome.zarr")
    assert [a["name"] for a in axes] == ["t", "c", "z", "y", "x"] and samples.shape == (2, 2, 2, 64, 64)
    assert scale == [5.0, 1.0, 0.3, 0.1, 0.1]
    mean = _read(out / "tl.ome.zarr")[0]
    np.testing.assert_allclose(samples.mean(axis=1), mean, rtol=1e-5, atol=1e-3)
    manifest = json.loads((out / MANIFEST_NAME).read_text())
    assert manifest["files"]["cz.ome.zarr"]["status"] == "complete"
    assert not (out / WORK_NAME).exists()


@pytest.mark.slow
def test_two_processes_agree_with_one_and_a_killed_run_resumes(trained_run, sim_data, tmp_path):
    _modern()
    src = tmp_path / "in"
    planes = _widefield_planes(sim_data, 12)
    for i in range(3):
        _write(src / f"f{i}.ome.zarr", planes[4 * i : 4 * i + 4], "zyx", "0.5", {"z": 0.3, "y": 0.1, "x": 0.1}, {})
    options = dict(samples=4, steps=12, seed=1)
    reference = predict_experiment(trained_run, src, tmp_path / "one", progress=False, **options)
    assert reference["planes"] == 12 and len(reference["complete"]) == 3
    names = [f"f{i}{s}.ome.zarr" for i in range(3) for s in ("", "_std")]

    launcher = accelerate_launcher("cpu_2proc.yaml", "--main_process_port", free_port())
    proc = _launch(_flags(trained_run, src, tmp_path / "two", **options), launcher)
    log = proc.communicate(timeout=600)[0]
    assert proc.returncode == 0 and "rank 1: " in log, log[-3000:]
    for name in names:
        np.testing.assert_allclose(_read(tmp_path / "two" / name)[0], _read(tmp_path / "one" / name)[0], atol=1e-4)

    # killed after the first image is complete, relaunched: only what is missing is computed
    out = tmp_path / "out"
    proc = _launch(_flags(trained_run, src, out, **options), start_new_session=True)
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
    finals = {p.name for p in out.glob("*.zarr")}
    assert finals == {n for k in complete for n in (k, k.replace(".ome.zarr", "_std.ome.zarr"))}
    logged = sum(
        line.startswith("done") for log in (out / WORK_NAME).rglob("rank*.log") for line in log.read_text().splitlines()
    )
    again = predict_experiment(trained_run, src, out, progress=False, **options)
    assert sorted(again["skipped"]) == sorted(complete)
    assert again["planes"] == 12 - 4 * len(complete) - logged
    for name in names:
        np.testing.assert_array_equal(_read(out / name)[0], _read(tmp_path / "one" / name)[0])


def test_bad_zarr_inputs_and_outputs_are_clear_errors(trained_run, sim_data, tmp_path, read_only_folder):
    zarr = _modern()
    plane = _widefield_planes(sim_data, 1)
    plain = zarr.open_group(str(tmp_path / "plain.zarr"), mode="w")
    plain.create_array("0", data=plane)
    good = _write(tmp_path / "good.ome.zarr", plane, "zyx", "0.4", None, None)
    old = _write(tmp_path / "old.ome.zarr", plane, "zyx", "0.4", None, None)
    attrs = json.loads((old / ".zattrs").read_text())
    attrs["multiscales"][0]["version"] = "0.3"
    (old / ".zattrs").write_text(json.dumps(attrs))
    labels = zarr.open_group(str(_write(tmp_path / "labels.ome.zarr", plane, "zyx", "0.4", None, None)), mode="r+")
    labels.attrs["image-label"] = {"version": "0.4"}
    run = dict(progress=False, samples=1, steps=1)
    out = tmp_path / "out"
    for source, message in (
        (tmp_path / "plain.zarr", "not an OME-Zarr image"),
        (old, "NGFF version 0.3 is not supported"),
        (tmp_path / "labels.ome.zarr", "label image"),
    ):
        with pytest.raises(DataError, match=message):
            predict_experiment(trained_run, source, out / "x.ome.zarr", **run)
        assert not (out / "x.ome.zarr").exists()
    with pytest.raises(JobError, match="in its own format"):
        predict_experiment(trained_run, good, out / "x.tif", **run)
    with pytest.raises(JobError, match="cannot write to the output folder"):
        predict_experiment(trained_run, good, read_only_folder / "x.ome.zarr", **run)
    # in a folder, a bad image is reported and the good one still finishes
    folder = tmp_path / "folder"
    folder.mkdir()
    for name in ("good.ome.zarr", "old.ome.zarr"):
        (tmp_path / name).rename(folder / name)
    result = predict_experiment(trained_run, folder, out, **run)
    assert result["complete"] == ["good.ome.zarr"] and "0.3" in result["failed"]["old.ome.zarr"]
    assert sorted(p.name for p in out.glob("*.zarr")) == ["good.ome.zarr", "good_std.ome.zarr"]


def test_zarr_2_says_what_to_install(trained_run, tmp_path, monkeypatch):
    """The simulate extra keeps zarr at 2.x: OME-Zarr then fails with one line that says why."""
    (tmp_path / "a.ome.zarr").mkdir()
    (tmp_path / "a.ome.zarr" / ".zattrs").write_text("{}")
    monkeypatch.setitem(sys.modules, "zarr", types.SimpleNamespace(__version__="2.18.7"))
    with pytest.raises(DataError, match=r'zarr 2\.18\.7 is installed: pip install "hazematching\[omezarr\]"'):
        predict_experiment(
            trained_run, tmp_path / "a.ome.zarr", tmp_path / "b.ome.zarr", progress=False, samples=1, steps=1
        )
