import re

import numpy as np
import pytest
import tifffile
import torch
from conftest import write_pair

from hazematching.data.checks import check_pairs
from hazematching.data.dataset import FixedCropDataset, RandomCropDataset, dihedral
from hazematching.data.io import DataError, load_splits, read_split
from hazematching.data.normalization import Normalization
from hazematching.data.sampling import StepBatchSampler


def test_two_channel_layout_cyx_and_yxc(tmp_path):
    data = np.stack([np.full((40, 50), 7, np.uint16), np.full((40, 50), 3, np.uint16)])
    tifffile.imwrite(tmp_path / "a.tif", data)
    tifffile.imwrite(tmp_path / "b.tif", np.moveaxis(data, 0, -1))
    pairs = read_split(tmp_path)
    for pair in pairs:
        assert pair.input.shape == (40, 50) and pair.input.dtype == np.float32
        assert (pair.target == 7).all() and (pair.input == 3).all()


def test_folder_layout_matches_by_name(tmp_path):
    for name, value in [("x.tif", 1), ("y.tif", 2)]:
        (tmp_path / "input").mkdir(exist_ok=True)
        (tmp_path / "target").mkdir(exist_ok=True)
        tifffile.imwrite(tmp_path / "input" / name, np.full((32, 32), value, np.uint8))
        tifffile.imwrite(tmp_path / "target" / name, np.full((32, 32), 10 * value, np.float32))
    pairs = read_split(tmp_path)
    assert [p.name for p in pairs] == ["x", "y"]
    assert (pairs[1].input == 2).all() and (pairs[1].target == 20).all()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "does not exist"),
        (lambda d: d.mkdir(), "no TIFF images"),
        (lambda d: (d.mkdir(), (d / "notes.txt").write_text("hi")), "notes.txt: not a TIFF"),
        (lambda d: (d.mkdir(), (d / "broken.tif").write_bytes(b"not a tiff at all")), "broken.tif: cannot be read"),
        (lambda d: write_pair(d / "small.tif", shape=(20, 64)), "smaller than the crop"),
        (
            lambda d: (d.mkdir(), tifffile.imwrite(d / "stack.tif", np.zeros((5, 2, 64, 64), np.uint16))),
            "stack.tif: shape",
        ),
        (lambda d: (d.mkdir(), tifffile.imwrite(d / "one.tif", np.zeros((64, 64), np.uint16))), "one.tif: shape"),
    ],
)
def test_bad_split_directories(tmp_path, make, message):
    directory = tmp_path / "split"
    make(directory)
    with pytest.raises(DataError, match=message):
        read_split(directory, min_size=32)


def test_nan_pixels_are_rejected_with_the_file_name(tmp_path):
    data = np.ones((2, 64, 64), np.float32)
    data[1, 5, 5] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", data)
    with pytest.raises(DataError, match=r"nan\.tif: contains 1 NaN/Inf"):
        read_split(tmp_path)


def test_folder_layout_errors(tmp_path):
    (tmp_path / "input").mkdir()
    (tmp_path / "target").mkdir()
    tifffile.imwrite(tmp_path / "input" / "a.tif", np.zeros((64, 64), np.uint16))
    tifffile.imwrite(tmp_path / "target" / "a.tif", np.zeros((64, 60), np.uint16))
    with pytest.raises(DataError, match=r"a\.tif has shape \(64, 64\) but its target .* \(64, 60\)"):
        read_split(tmp_path)
    tifffile.imwrite(tmp_path / "input" / "b.tif", np.zeros((64, 64), np.uint16))
    with pytest.raises(DataError, match="no target with the same name"):
        read_split(tmp_path)
    tifffile.imwrite(tmp_path / "input" / "c.tif", np.zeros((3, 64, 64), np.uint16))
    tifffile.imwrite(tmp_path / "target" / "c.tif", np.zeros((3, 64, 64), np.uint16))
    (tmp_path / "input" / "b.tif").unlink()
    (tmp_path / "target" / "a.tif").unlink()
    (tmp_path / "input" / "a.tif").unlink()
    with pytest.raises(DataError, match="c.tif: input image has shape .*3D stacks"):
        read_split(tmp_path)


def test_load_splits_layouts(tmp_path):
    for i in range(5):
        write_pair(tmp_path / "flat" / f"img{i}.tif", seed=i)
        write_pair(tmp_path / "nested" / "train" / f"img{i}.tif", seed=i)
    write_pair(tmp_path / "nested" / "val" / "v.tif")
    train, val = load_splits(tmp_path / "flat", None, 0.2, 32)
    assert [p.name for p in train] == ["img0", "img1", "img2", "img3"] and [p.name for p in val] == ["img4"]
    train, val = load_splits(tmp_path / "nested", None, 0.2, 32)
    assert len(train) == 5 and [p.name for p in val] == ["v"]
    write_pair(tmp_path / "single" / "only.tif")
    with pytest.raises(DataError, match="--val-data"):
        load_splits(tmp_path / "single", None, 0.2, 32)


def test_normalization_statistics_match_numpy(tmp_path):
    for i in range(3):
        write_pair(tmp_path / f"{i}.tif", shape=(30 + i, 40), seed=i)
    pairs = read_split(tmp_path)
    norm = Normalization.from_pairs(pairs)
    inputs = np.concatenate([p.input.ravel() for p in pairs])
    targets = np.concatenate([p.target.ravel() for p in pairs])
    assert norm.input_mean == pytest.approx(inputs.mean(), rel=1e-6)
    assert norm.input_std == pytest.approx(inputs.std(), rel=1e-6)
    assert norm.target_std == pytest.approx(targets.std(), rel=1e-6)
    assert norm.denormalize_target(norm.normalize_target(5.0)) == pytest.approx(5.0)


def test_dihedral_group_has_eight_distinct_elements():
    a = np.arange(9).reshape(3, 3)
    assert len({dihedral(a, k).tobytes() for k in range(8)}) == 8


def test_random_crops_are_a_function_of_the_key(tmp_path):
    for i in range(3):
        write_pair(tmp_path / f"{i}.tif", shape=(80, 96), seed=i)
    pairs = read_split(tmp_path)
    norm = Normalization.from_pairs(pairs)
    ds = RandomCropDataset(pairs, 32, norm, seed=1)
    a, b = ds[17], ds[17]
    assert torch.equal(a["input"], b["input"]) and a["key"] == 17
    assert a["input"].shape == (1, 32, 32)
    assert not torch.equal(ds[17]["input"], ds[18]["input"])
    assert not torch.equal(RandomCropDataset(pairs, 32, norm, seed=2)[17]["input"], a["input"])
    # input and target crops are aligned: recover the crop position from the target
    item = ds[5]
    pair = pairs[5 % 3]
    found = [
        (k, y, x)
        for k in range(8)
        for y in range(80 - 31)
        for x in range(96 - 31)
        if np.allclose(
            dihedral(norm.normalize_target(pair.target[y : y + 32, x : x + 32]), k), item["target"][0].numpy()
        )
    ]
    assert len(found) >= 1
    k, y, x = found[0]
    assert np.allclose(dihedral(norm.normalize_input(pair.input[y : y + 32, x : x + 32]), k), item["input"][0].numpy())


def test_fixed_crops_are_fixed(tmp_path):
    write_pair(tmp_path / "a.tif", shape=(70, 70))
    pairs = read_split(tmp_path)
    norm = Normalization.from_pairs(pairs)
    a = FixedCropDataset(pairs, 32, norm, crops_per_image=3)
    b = FixedCropDataset(pairs, 32, norm, crops_per_image=3)
    assert len(a) == 3 and all(torch.equal(x["input"], y["input"]) for x, y in zip(a.items, b.items))


def test_two_ranks_split_the_one_rank_batch_exactly():
    one = StepBatchSampler(37, batch_size=4, seed=3)
    ranks = [StepBatchSampler(37, batch_size=2, seed=3, rank=r, world_size=2) for r in range(2)]
    for step in range(40):  # crosses several epochs
        assert one.keys(step) == ranks[0].keys(step) + ranks[1].keys(step)
    # every item appears once per epoch
    keys = [k for step in range(37) for k in one.keys(step)][: 4 * 37]
    epoch0 = [k for k in keys if k < 37]
    assert sorted(epoch0) == list(range(37))
    resumed = StepBatchSampler(37, batch_size=4, seed=3, start_micro_step=10)
    assert next(iter(resumed)) == one.keys(10)


def test_worker_processes_load_the_same_batches(tmp_path):
    """num_workers > 0 (the GPU default) must not change what a step trains on."""
    from torch.utils.data import DataLoader

    for i in range(3):
        write_pair(tmp_path / f"{i}.tif", shape=(80, 96), seed=i)
    pairs = read_split(tmp_path)
    ds = RandomCropDataset(pairs, 32, Normalization.from_pairs(pairs), seed=1)
    batches = []
    for workers in (0, 2):
        loader = DataLoader(ds, batch_sampler=StepBatchSampler(len(ds), 4, seed=3), num_workers=workers)
        batches.append([b for _, b in zip(range(5), loader)])
    for serial, parallel in zip(*batches):
        assert torch.equal(serial["key"], parallel["key"]) and torch.equal(serial["input"], parallel["input"])


def test_memory_mapped_pairs_give_the_same_crops(tmp_path):
    """The trainer maps uncompressed TIFFs instead of loading them; compressed ones are read."""
    for i in range(2):
        write_pair(tmp_path / f"{i}.tif", shape=(80, 96), seed=i)
    compressed = tmp_path / "2.tif"
    tifffile.imwrite(compressed, tifffile.imread(tmp_path / "0.tif"), compression="zlib")
    loaded, mapped = read_split(tmp_path), read_split(tmp_path, mmap=True)

    def is_mapped(array):
        while array is not None:
            if isinstance(array, np.memmap):
                return True
            array = array.base
        return False

    assert is_mapped(mapped[0].input) and is_mapped(mapped[1].target)
    assert not is_mapped(mapped[2].input)  # compressed: read into memory
    norm_a, norm_b = Normalization.from_pairs(loaded), Normalization.from_pairs(mapped)
    assert norm_a.to_dict() == pytest.approx(norm_b.to_dict(), rel=1e-9)
    a, b = RandomCropDataset(loaded, 32, norm_a, seed=1), RandomCropDataset(mapped, 32, norm_a, seed=1)
    for key in (0, 5, 17):
        assert torch.equal(a[key]["input"], b[key]["input"]) and torch.equal(a[key]["target"], b[key]["target"])


def checked(folder, val_fraction):
    """What the trainer does before the first step: load the splits, check the pairs, keep the warnings."""
    train, val = load_splits(folder, None, val_fraction, 32)
    return check_pairs(train, "training") + check_pairs(val, "validation")


def _pairs_folder(folder, make_pair, count=3):
    for i in range(count):
        folder.mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(folder / f"p{i}.tif", make_pair(i))
    return folder


def _hazy_pair(seed, shape=(48, 48)):
    """Target: sparse bright spots; input: the same blurred plus background (less contrast)."""
    rng = np.random.default_rng(seed)
    target = np.zeros(shape, np.float32)
    target[tuple(rng.integers(0, shape[0], (2, 30)))] = 1000
    blurred = sum(np.roll(np.roll(target, dy, 0), dx, 1) for dy in range(-3, 4) for dx in range(-3, 4)) / 49
    return np.stack([target + 20, blurred + 200 + rng.normal(0, 5, shape)]).astype(np.float32)


@pytest.mark.parametrize("split", ["train", "val"])
@pytest.mark.parametrize("channel", [0, 1])
def test_a_constant_channel_is_refused_naming_file_split_and_channel(tmp_path, split, channel):
    for name in ("train", "val"):
        _pairs_folder(tmp_path / name, _hazy_pair)
    bad = _hazy_pair(7)
    bad[channel] = 42
    tifffile.imwrite(tmp_path / split / "p1.tif", bad)
    role = "target" if channel == 0 else "input"
    expected = f"{tmp_path / split / 'p1.tif'}: the {role} (channel {channel}) "
    expected += f"({'training' if split == 'train' else 'validation'} split) is constant (42 everywhere); "
    with pytest.raises(DataError, match=re.escape(expected)):
        checked(tmp_path, 0.2)


def test_every_constant_pair_is_counted_and_folder_layouts_name_the_file(tmp_path):
    _pairs_folder(tmp_path / "flat", lambda i: np.stack([np.full((48, 48), 42.0), _hazy_pair(i)[1]]), 4)
    with pytest.raises(DataError, match=re.escape("(and 2 more pair(s) of the training split)")):
        checked(tmp_path / "flat", 0.25)
    for i in range(3):
        pair = _hazy_pair(i)
        for role, image in (("input", pair[1]), ("target", np.full_like(pair[0], 7) if i == 2 else pair[0])):
            (tmp_path / "folders" / role).mkdir(parents=True, exist_ok=True)
            tifffile.imwrite(tmp_path / "folders" / role / f"s{i}.tif", image)
    expected = f"{tmp_path / 'folders' / 'target' / 's2.tif'}: the target image (validation split) is constant"
    with pytest.raises(DataError, match=re.escape(expected)):
        checked(tmp_path / "folders", 0.34)


def test_copied_channels_are_refused_and_swapped_channels_warned(tmp_path):
    _pairs_folder(tmp_path / "same", lambda i: np.stack([_hazy_pair(i)[1]] * 2))
    with pytest.raises(DataError, match="p0.tif .*input and target are the same image"):
        checked(tmp_path / "same", 0.34)
    _pairs_folder(tmp_path / "affine", lambda i: np.stack([2 * _hazy_pair(i)[1] + 5, _hazy_pair(i)[1]]))
    with pytest.raises(DataError, match="perhaps rescaled"):
        checked(tmp_path / "affine", 0.34)

    _pairs_folder(tmp_path / "good", _hazy_pair, 4)
    assert checked(tmp_path / "good", 0.25) == []
    _pairs_folder(tmp_path / "swapped", lambda i: _hazy_pair(i)[::-1].copy(), 4)
    warnings = checked(tmp_path / "swapped", 0.25)
    assert len(warnings) == 1 and "in 3 of 3 pairs the input (channel 1) has more contrast" in warnings[0]


def test_a_nearly_constant_channel_is_warned_about_naming_file_split_and_channel(tmp_path):
    """Robustness case 2, another instance: 42 everywhere but 0.1 % of pixels at 43 trained silently."""
    _pairs_folder(tmp_path / "train", _hazy_pair, 4)
    nearly = _hazy_pair(9, shape=(64, 64))
    nearly[0] = 42
    nearly[0, 0, :4] = 43
    tifffile.imwrite(tmp_path / "train" / "p9.tif", nearly)
    warnings = checked(tmp_path, 0.2)
    ours = [w for w in warnings if f"{tmp_path / 'train' / 'p9.tif'}: the target (channel 0) (" in w]
    assert len(ours) == 1 and "split) is nearly constant: 99.9 % of its pixels are 42" in ours[0], warnings


def test_faint_noise_on_a_constant_is_warned_about_and_small_units_are_not_constant(tmp_path):
    """Two more instances of case 2: a float target 42 + N(0, 1e-4) trained silently; a real pair in
    small units (x 1e-9) was refused as constant, and its pairs were counted twice."""
    _pairs_folder(tmp_path / "faint" / "train", _hazy_pair, 4)
    faint = _hazy_pair(9, shape=(64, 64))
    faint[0] = 42 + np.random.default_rng(0).normal(0, 1e-4, (64, 64))
    tifffile.imwrite(tmp_path / "faint" / "train" / "p9.tif", faint.astype(np.float32))
    warnings = checked(tmp_path / "faint", 0.2)
    ours = [w for w in warnings if f"{tmp_path / 'faint' / 'train' / 'p9.tif'}: the target (channel 0) (" in w]
    assert len(ours) == 1 and "is nearly constant: its std is 2.4e-06 of its mean 42" in ours[0], warnings

    _pairs_folder(tmp_path / "small", lambda i: (_hazy_pair(i) * 1e-9).astype(np.float32), 4)
    assert checked(tmp_path / "small", 0.25) == []


def test_swapped_input_and_target_folders_are_named_as_folders(tmp_path):
    for i in range(4):
        pair = _hazy_pair(i)
        for role, image in (("input", pair[0]), ("target", pair[1])):  # swapped
            (tmp_path / role).mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / role / f"s{i}.tif", image)
    warnings = checked(tmp_path, 0.25)
    assert len(warnings) == 1 and "pairs the input image has more contrast than the target image" in warnings[0]
