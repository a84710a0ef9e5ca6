import numpy as np
import pytest
import torch
from torchmetrics.functional.image import multiscale_structural_similarity_index_measure, peak_signal_noise_ratio

from hazematching.evaluation import metrics


@pytest.fixture(scope="module")
def image():
    rng = np.random.default_rng(0)
    y, x = np.mgrid[:192, :192]
    img = np.sin(x / 7.0) * np.cos(y / 11.0) + 0.3 * rng.random((192, 192))
    img = (img - img.min()) / (img.max() - img.min())  # exactly [0, 1]
    return img


def test_psnr_known_noise_level(image):
    rng = np.random.default_rng(1)
    noisy = image + rng.normal(0, 0.1, image.shape)
    assert metrics.psnr(noisy, image, data_range=1.0) == pytest.approx(20.0, abs=0.1)
    reference = peak_signal_noise_ratio(torch.from_numpy(noisy), torch.from_numpy(image), data_range=1.0)
    assert metrics.psnr(noisy, image, data_range=1.0) == pytest.approx(float(reference), abs=1e-6)
    assert metrics.psnr(image, image) > 100


def test_range_invariant_psnr_ignores_gain_and_offset(image):
    rng = np.random.default_rng(2)
    noisy = image + rng.normal(0, 0.05, image.shape)
    base = metrics.range_invariant_psnr(noisy, image)
    assert metrics.range_invariant_psnr(3.5 * noisy + 200, image) == pytest.approx(base, abs=1e-6)
    # the fit can only help: never worse than plain PSNR
    assert base >= metrics.psnr(noisy, image) - 1e-9
    assert metrics.range_invariant_psnr(noisy + 0.3, image) > metrics.psnr(noisy + 0.3, image) + 5


def test_ms_ssim_matches_torchmetrics_and_orders_noise(image):
    rng = np.random.default_rng(3)
    assert metrics.ms_ssim(image, image) == pytest.approx(1.0, abs=1e-6)
    a = image + rng.normal(0, 0.05, image.shape)
    b = image + rng.normal(0, 0.2, image.shape)
    assert metrics.ms_ssim(a, image) > metrics.ms_ssim(b, image)
    fitted = metrics.affine_fit(torch.from_numpy(a), torch.from_numpy(image))
    reference = multiscale_structural_similarity_index_measure(
        fitted[None, None].float(),
        torch.from_numpy(image)[None, None].float(),
        data_range=1.0,
        normalize="relu",
    )  # 192 px > 160: all 5 default scales
    assert metrics.ms_ssim(a, image) == pytest.approx(float(reference), abs=1e-5)
    # smaller images use fewer scales instead of failing
    assert 0 < metrics.ms_ssim(a[:64, :64], image[:64, :64]) < 1


def test_micro_ms3im_bounds_and_order(image):
    rng = np.random.default_rng(4)
    target = 100 + 1000 * image
    assert metrics.micro_ms3im(target, target) == pytest.approx(1.0, abs=1e-3)
    good = target + rng.normal(0, 20, image.shape)
    bad = target + rng.normal(0, 200, image.shape)
    assert 1.0 >= metrics.micro_ms3im(good, target) > metrics.micro_ms3im(bad, target)
    # range invariant: a gain and an offset on the prediction change little
    assert metrics.micro_ms3im(0.5 * good + 30, target) == pytest.approx(metrics.micro_ms3im(good, target), abs=0.02)


def test_gmsd_hand_cases(image):
    assert metrics.gmsd(image, image) == pytest.approx(0.0, abs=1e-12)
    rng = np.random.default_rng(5)
    small = metrics.gmsd(image + rng.normal(0, 0.01, image.shape), image)
    large = metrics.gmsd(image + rng.normal(0, 0.1, image.shape), image)
    assert 0 < small < large
    # a constant prediction has no gradients at all: GMS = c / (g_t^2 + c) varies with the target
    assert metrics.gmsd(np.full_like(image, 0.5), image) > small
    # hand case: a ramp (after 2x pooling, step s = 2/63 per pixel) against twice the ramp. Prewitt
    # gives |g| = 2 s inside and s in the two replicate-padded border columns; with gradients g and
    # 2 g, GMS = (4 g^2 + c) / (5 g^2 + c): 30 interior and 2 border columns of 32.
    ramp = np.tile(np.arange(64, dtype=np.float64) / 63, (64, 1))
    c, step = 0.0026, 2 / 63
    gms = lambda g: (4 * g * g + c) / (5 * g * g + c)  # noqa: E731
    expected = np.std([gms(2 * step)] * 30 + [gms(step)] * 2)
    assert metrics.gmsd(2 * ramp, ramp) == pytest.approx(expected, rel=1e-9)
    # intensity units do not matter (both scaled by the target's range)
    assert metrics.gmsd(1000 * image + 5, 1000 * image + 5) == pytest.approx(0.0, abs=1e-12)


def test_fsim_hand_cases(image):
    assert metrics.fsim(image, image) == pytest.approx(1.0, abs=1e-12)
    rng = np.random.default_rng(6)
    small = metrics.fsim(image + rng.normal(0, 0.02, image.shape), image)
    large = metrics.fsim(image + rng.normal(0, 0.2, image.shape), image)
    assert 1.0 > small > large > 0
    blurred = metrics.fsim(__import__("scipy").ndimage.gaussian_filter(image, 3), image)
    assert blurred < small
    # phase congruency is high on a step edge and, above the estimated noise, ~0 in flat regions
    step = np.zeros((256, 256))
    step[:, 128:] = 255.0
    pc = metrics._phase_congruency(step + rng.normal(0, 10, step.shape))
    assert pc[:, 127:129].mean() > 0.6 and pc[:, 56:72].mean() < 0.1


@pytest.mark.parametrize("size", [16, 43, 44, 81, 90, 98, 99, 161, 175, 176])
def test_ms_ssim_runs_at_every_size_torchmetrics_allows(size):
    """81-98 px and 161-175 px images once asked torchmetrics for more scales than it computes there."""
    from hazematching.evaluation.metrics import ms_ssim, ms_ssim_scales

    rng = np.random.default_rng(size)
    target = rng.random((size, size))
    assert 0.5 < ms_ssim(target + 0.05 * rng.random((size, size)), target) <= 1.0
    assert ms_ssim_scales(size) == {16: 1, 43: 2, 44: 3, 81: 3, 90: 3, 98: 3, 99: 4, 161: 4, 175: 4, 176: 5}[size]
