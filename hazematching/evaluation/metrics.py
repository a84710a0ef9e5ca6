"""Image-quality metrics of the paper, on images in the target's intensity units.

Widefield inputs, baselines and HazeMatching predictions live on different intensity scales, so the
fidelity metrics are range-invariant: the prediction is first mapped onto the target by the
least-squares affine fit (PSNR, MS-SSIM), and MicroMS3IM (package ``microssim``) estimates its own
offsets and range factor. GMSD is computed on images scaled to [0, 1] by the target's range.
"""

import math

import numpy as np
import torch
import torch.nn.functional as F


def _t(x) -> torch.Tensor:
    return x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))


def affine_fit(prediction, target) -> torch.Tensor:
    """Least-squares a * prediction + b against target: removes any brightness/offset mismatch."""
    prediction, target = _t(prediction), _t(target)
    p = prediction.double().flatten()
    t = target.double().flatten()
    pc = p - p.mean()
    a = (pc * (t - t.mean())).sum() / (pc * pc).sum().clamp_min(1e-12)
    return (a * (prediction.double() - p.mean()) + t.mean()).to(target.dtype)


def psnr(prediction, target, data_range: float | None = None) -> float:
    prediction, target = _t(prediction), _t(target)
    mse = torch.mean((prediction.double() - target.double()) ** 2)
    if data_range is None:
        data_range = float(target.max() - target.min())
    return float(10 * torch.log10(data_range**2 / mse.clamp_min(1e-20)))


def range_invariant_psnr(prediction, target) -> float:
    """PSNR after the best affine mapping of the prediction onto the target, with the target's range."""
    return psnr(affine_fit(prediction, target), target)


def ms_ssim_scales(size: int, kernel: int = 11) -> int:
    """The most scales (at most the standard 5) torchmetrics' MS-SSIM computes on ``size`` px: the
    coarsest scale must hold the kernel, and torchmetrics also requires
    ``size // (scales - 1) ** 2 > kernel - 1`` (4 scales need 99 px, 5 need 176)."""
    scales = max(1, min(5, int(math.floor(math.log2((size - 1) / (kernel - 1)))) + 1))
    while scales > 1 and size // max(1, scales - 1) ** 2 <= kernel - 1:
        scales -= 1
    return scales


def ms_ssim(prediction, target) -> float:
    """torchmetrics' MS-SSIM of the affinely fitted prediction; scales reduced for small images."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    prediction, target = _t(prediction).double(), _t(target).double()
    fitted = affine_fit(prediction, target)
    size = min(target.shape[-2:])
    betas = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    scales = ms_ssim_scales(size)
    betas = tuple(b / sum(betas[:scales]) for b in betas[:scales])
    value = multiscale_structural_similarity_index_measure(
        fitted[None, None].float(),
        target[None, None].float(),
        data_range=float(target.max() - target.min()),
        betas=betas,
        normalize="relu",
    )
    return float(value)


MS3IM_MIN_SIZE = 161  # microssim's 5-scale pyramid with an 11 px kernel needs more than 160 px a side


def micro_ms3im_problem(shapes: list[tuple[int, ...]], names: list[str]) -> str | None:
    """Why MicroMS3IM cannot be computed on a set of images (None when it can): evaluate and tune
    compute it for all images of a folder or for none, so that means compare like with like."""
    small = [name for name, shape in zip(names, shapes) if min(shape[-2:]) < MS3IM_MIN_SIZE]
    if not small:
        return None
    return (
        f"not computed: MicroMS3IM needs images of at least {MS3IM_MIN_SIZE} px a side; {len(small)} of "
        f"{len(names)} are smaller ({', '.join(small[:3])}{', ...' if len(small) > 3 else ''})"
    )


def micro_ms3im(prediction, target) -> float:
    """MicroMS3IM (microssim), fitted on this pair. Needs images of ``MS3IM_MIN_SIZE`` px a side."""
    from microssim import micro_multiscale_structural_similarity

    return float(
        micro_multiscale_structural_similarity(np.asarray(target, np.float64), np.asarray(prediction, np.float64))
    )


def gmsd(prediction, target) -> float:
    """Gradient magnitude similarity deviation (Xue et al. 2014); 0 for identical images.

    Both images are scaled by the target's range to [0, 1], average-pooled by 2 as in the original,
    and compared through Prewitt gradient magnitudes with c = 0.0026 (170 / 255^2).
    """
    prediction, target = _t(prediction).double(), _t(target).double()
    lo, hi = target.min(), target.max()
    scale = (hi - lo).clamp_min(1e-12)
    images = torch.stack([(prediction - lo) / scale, (target - lo) / scale])[:, None]
    images = F.avg_pool2d(images, 2)
    prewitt = torch.tensor([[1.0, 0.0, -1.0]] * 3, dtype=torch.float64) / 3.0
    kernels = torch.stack([prewitt, prewitt.T])[:, None]
    grads = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernels)
    magnitude = grads.pow(2).sum(dim=1).sqrt()
    c = 0.0026
    gms = (2 * magnitude[0] * magnitude[1] + c) / (magnitude[0] ** 2 + magnitude[1] ** 2 + c)
    return float(gms.std(unbiased=False))


def _phase_congruency(
    image: np.ndarray,
    scales: int = 4,
    orientations: int = 4,
    min_wavelength: float = 6.0,
    mult: float = 2.0,
    sigma_on_f: float = 0.55,
    d_theta_on_sigma: float = 1.2,
    k: float = 2.0,
) -> np.ndarray:
    """Kovesi's phase congruency with log-Gabor filters, as used by FSIM (Zhang et al. 2011)."""
    rows, cols = image.shape
    spectrum = np.fft.fft2(image)
    x = (np.arange(cols) - cols // 2) / (cols - cols % 2)
    y = (np.arange(rows) - rows // 2) / (rows - rows % 2)
    xx, yy = np.meshgrid(x, y)
    radius = np.fft.ifftshift(np.sqrt(xx**2 + yy**2))
    theta = np.fft.ifftshift(np.arctan2(-yy, xx))
    radius[0, 0] = 1.0
    lowpass = 1.0 / (1.0 + (radius / 0.45) ** 30)
    log_gabor = []
    for s in range(scales):
        centre = 1.0 / (min_wavelength * mult**s)
        lg = np.exp(-(np.log(radius / centre) ** 2) / (2 * np.log(sigma_on_f) ** 2)) * lowpass
        lg[0, 0] = 0.0
        log_gabor.append(lg)
    theta_sigma = np.pi / orientations / d_theta_on_sigma
    energy_all = np.zeros_like(image)
    amplitude_all = np.zeros_like(image)
    for o in range(orientations):
        angle = o * np.pi / orientations
        ds = np.sin(theta) * np.cos(angle) - np.cos(theta) * np.sin(angle)
        dc = np.cos(theta) * np.cos(angle) + np.sin(theta) * np.sin(angle)
        spread = np.exp(-(np.abs(np.arctan2(ds, dc)) ** 2) / (2 * theta_sigma**2))
        responses, filters_spatial = [], []
        for s in range(scales):
            filt = log_gabor[s] * spread
            filters_spatial.append(np.real(np.fft.ifft2(filt)) * np.sqrt(rows * cols))
            responses.append(np.fft.ifft2(spectrum * filt))
        sum_even = sum(r.real for r in responses)
        sum_odd = sum(r.imag for r in responses)
        sum_amplitude = sum(np.abs(r) for r in responses)
        x_energy = np.sqrt(sum_even**2 + sum_odd**2) + 1e-4
        mean_even, mean_odd = sum_even / x_energy, sum_odd / x_energy
        energy = sum(
            r.real * mean_even + r.imag * mean_odd - np.abs(r.real * mean_odd - r.imag * mean_even) for r in responses
        )
        # noise threshold from the smallest scale's median response
        em_n = np.sum((log_gabor[0] * spread) ** 2)
        noise_power = -np.median(np.abs(responses[0]) ** 2) / np.log(0.5) / em_n
        sum_an2 = sum(np.sum(f**2) for f in filters_spatial)
        sum_aiaj = sum(
            np.sum(filters_spatial[i] * filters_spatial[j]) for i in range(scales) for j in range(i + 1, scales)
        )
        noise_energy2 = 2 * noise_power * sum_an2 + 4 * noise_power * sum_aiaj
        tau = np.sqrt(max(noise_energy2, 0.0) / 2)
        threshold = (tau * np.sqrt(np.pi / 2) + k * np.sqrt((2 - np.pi / 2) * tau**2)) / 1.7
        energy_all += np.maximum(energy - threshold, 0.0)
        amplitude_all += sum_amplitude
    return energy_all / (amplitude_all + 1e-4)


def fsim(prediction, target) -> float:
    """Feature similarity index FSIM (Zhang et al. 2011) on images scaled to 0..255 by the target's range.

    Phase congruency (structure) and Scharr gradient magnitude (contrast) similarities, pooled with
    the larger phase congruency as weight; 1 for identical images.
    """
    from scipy import ndimage

    pred, tgt = np.asarray(prediction, np.float64), np.asarray(target, np.float64)
    lo, hi = tgt.min(), tgt.max()
    pred, tgt = (255.0 * (p - lo) / max(hi - lo, 1e-12) for p in (pred, tgt))
    factor = max(1, round(min(tgt.shape) / 256))
    if factor > 1:
        pred, tgt = (ndimage.uniform_filter(p, factor)[::factor, ::factor] for p in (pred, tgt))
    pc_p, pc_t = _phase_congruency(pred), _phase_congruency(tgt)
    scharr = np.array([[3.0, 0.0, -3.0], [10.0, 0.0, -10.0], [3.0, 0.0, -3.0]]) / 16.0

    def gradient(img):
        return np.hypot(ndimage.convolve(img, scharr, mode="nearest"), ndimage.convolve(img, scharr.T, mode="nearest"))

    g_p, g_t = gradient(pred), gradient(tgt)
    s_pc = (2 * pc_p * pc_t + 0.85) / (pc_p**2 + pc_t**2 + 0.85)
    s_g = (2 * g_p * g_t + 160.0) / (g_p**2 + g_t**2 + 160.0)
    weight = np.maximum(pc_p, pc_t)
    return float(np.sum(s_pc * s_g * weight) / np.sum(weight))
