import torch

from hazematching.core.noise import _mul32, hash32, hash_normal


def test_mul32_matches_python_modular_arithmetic():
    xs = torch.tensor([0, 1, 2**31 - 1, 2**32 - 1, 123456789, 4000000000], dtype=torch.int64)
    for c in (0x7FEB352D, 0x846CA68B):
        expected = [(int(x) * c) % 2**32 for x in xs]
        assert _mul32(xs, c).tolist() == expected


def test_hash32_is_a_bijection_on_a_range_and_stays_32_bit():
    x = torch.arange(0, 100_000, dtype=torch.int64)
    h = hash32(x)
    assert h.unique().numel() == x.numel()
    assert int(h.min()) >= 0 and int(h.max()) < 2**32
    # negative inputs (tiles left of the image origin) are taken modulo 2**32
    assert hash32(torch.tensor([-1])).item() == hash32(torch.tensor([2**32 - 1])).item()


def test_hash_normal_is_standard_normal():
    z = hash_normal(seed=5, sample_index=0, batch=1, channels=1, height=256, width=256).flatten()
    assert abs(float(z.mean())) < 0.01
    assert abs(float(z.std()) - 1) < 0.01
    # tails of a normal: ~0.27 % beyond 3 sigma
    assert 0.001 < float((z.abs() > 3).float().mean()) < 0.005
    # neighbouring pixels uncorrelated
    corr = torch.corrcoef(torch.stack([z[:-1], z[1:]]))[0, 1]
    assert abs(float(corr)) < 0.01


def test_hash_normal_deterministic_and_keyed():
    a = hash_normal(1, 0, 1, 1, 32, 32)
    assert torch.equal(a, hash_normal(1, 0, 1, 1, 32, 32))
    assert not torch.allclose(a, hash_normal(2, 0, 1, 1, 32, 32))
    assert not torch.allclose(a, hash_normal(1, 1, 1, 1, 32, 32))
    two_channels = hash_normal(1, 0, 1, 2, 32, 32)
    assert torch.equal(two_channels[:, :1], a)
    assert not torch.allclose(two_channels[:, 0], two_channels[:, 1])


def test_tile_noise_equals_crop_of_whole_image_noise():
    whole = hash_normal(7, 3, 1, 1, 100, 120)
    origins_y, origins_x = torch.tensor([0, 40, 36]), torch.tensor([0, 56, 8])
    tiles = hash_normal(7, 3, 3, 1, 64, 64, origins_y, origins_x)
    for i in range(3):
        y, x = int(origins_y[i]), int(origins_x[i])
        assert torch.equal(tiles[i, :, : 100 - y, : 120 - x][..., :64, :64], whole[0, :, y : y + 64, x : x + 64])


def test_keyed_normal_depends_only_on_seed_and_key():
    from hazematching.core import keyed_normal

    both = keyed_normal(torch.tensor([3, 11]), seed=4, channels=2, height=16, width=24)
    assert both.shape == (2, 2, 16, 24) and both.dtype == torch.float32
    # an item's noise does not depend on its batch neighbours or position in the batch (resume, N processes)
    assert torch.equal(both[1], keyed_normal(torch.tensor([11]), 4, 2, 16, 24)[0])
    assert torch.equal(both[0], keyed_normal(torch.tensor([5, 3]), 4, 2, 16, 24)[1])
    assert not torch.allclose(both[0], both[1])
    assert not torch.allclose(both[0], keyed_normal(torch.tensor([3]), 5, 2, 16, 24)[0])
    assert not torch.allclose(both[0, 0], both[0, 1])
    # keys beyond 32 bits stay distinct
    assert not torch.allclose(
        keyed_normal(torch.tensor([3]), 4, 1, 8, 8), keyed_normal(torch.tensor([3 + 2**32]), 4, 1, 8, 8)
    )
    z = keyed_normal(torch.arange(64), 0, 1, 32, 32)
    assert abs(float(z.mean())) < 0.01 and abs(float(z.std()) - 1) < 0.01
    across_items = torch.corrcoef(z.flatten(1)[:2])[0, 1]
    assert abs(float(across_items)) < 0.1


def test_keyed_time_grid_and_uniform():
    from hazematching.core import keyed_time

    keys = torch.arange(2000)
    grid = keyed_time(keys, seed=0, grid_points=20)
    assert set((grid * 19).round().int().tolist()) == set(range(20))
    uniform = keyed_time(keys, seed=0)
    assert 0 <= float(uniform.min()) and float(uniform.max()) < 1 and len(uniform.unique()) == 2000
    assert abs(float(uniform.mean()) - 0.5) < 0.02
    assert torch.equal(keyed_time(keys[5:6], 0), uniform[5:6])
    assert not torch.equal(keyed_time(keys, 1), uniform)


def test_keyed_fraction_picks_about_that_fraction_by_key():
    """--mean-anchor-fraction's choice of items: about f of them, a function of (seed, key) alone, so a
    batch split over processes or a resume chooses the same items."""
    from hazematching.core.noise import keyed_fraction

    keys = torch.arange(4000)
    chosen = keyed_fraction(keys, 3, 0.25, 0x3D4C2B1A)
    assert abs(float(chosen.float().mean()) - 0.25) < 0.02
    assert torch.equal(keyed_fraction(keys[123:130], 3, 0.25, 0x3D4C2B1A), chosen[123:130])
    assert not torch.equal(keyed_fraction(keys, 4, 0.25, 0x3D4C2B1A), chosen)
    assert not keyed_fraction(keys, 3, 0.0, 0x3D4C2B1A).any()
