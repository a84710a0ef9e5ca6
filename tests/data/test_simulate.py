import numpy as np
import pytest
import tifffile

from hazematching.cli import main as cli_main
from hazematching.data.io import read_split
from hazematching.data.simulate import split_counts


def test_simulate_without_microsim_says_what_to_install(tmp_path, monkeypatch, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "microsim" else real(name, *a))
    with pytest.raises(SystemExit) as exc:
        cli_main(["simulate", "--out", str(tmp_path / "x"), "--num-images", "3", "--size", "64"])
    message = str(exc.value)
    assert 'pip install "hazematching[simulate]"' in message and "\n" not in message
    assert not (tmp_path / "x").exists()


def test_simulate_cli_layout_and_reproducibility(tmp_path, capsys):
    pytest.importorskip("microsim", reason='needs the simulate extra: pip install "hazematching[simulate]"')
    for name, seed in [("a", 1), ("b", 1), ("c", 2)]:
        cli_main(
            [
                "simulate",
                "--out",
                str(tmp_path / name),
                "--num-images",
                "4",
                "--size",
                "64",
                "--seed",
                str(seed),
                "--depth",
                "16",
            ]
        )
    assert "wrote 4 pairs" in capsys.readouterr().out
    files = sorted(p.relative_to(tmp_path / "a") for p in (tmp_path / "a").rglob("*.tif"))
    assert [str(f.parent) for f in files] == ["test", "train", "train", "val"]
    for f in files:
        a = tifffile.imread(tmp_path / "a" / f)
        assert a.shape == (2, 64, 64) and a.dtype == np.uint16
        assert np.array_equal(a, tifffile.imread(tmp_path / "b" / f))
        assert not np.array_equal(a, tifffile.imread(tmp_path / "c" / f))
    assert not list(tmp_path.rglob("*.tmp"))


def test_widefield_is_hazier_than_confocal(sim_data):
    """Out-of-focus light: the widefield input has a brighter, smoother background than the target."""
    pairs = read_split(sim_data / "train")
    for pair in pairs:
        wf, cf = pair.input - 100, pair.target - 100  # remove the camera offset

        # fraction of the signal in the dim half of the pixels: haze lifts the background
        def dim_fraction(img):
            img = np.clip(img, 0, None)
            return img[img <= np.median(img)].sum() / img.sum()

        assert dim_fraction(wf) > dim_fraction(cf)
    # and the two modalities see the same structures
    corr = np.mean([np.corrcoef(p.input.ravel(), p.target.ravel())[0, 1] for p in pairs])
    assert corr > 0.3


def test_split_counts():
    assert split_counts(24) == {"train": 16, "val": 4, "test": 4}
    assert split_counts(3) == {"train": 1, "val": 1, "test": 1}
    with pytest.raises(ValueError, match="num-images"):
        split_counts(2)
