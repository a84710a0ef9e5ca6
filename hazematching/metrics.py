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


def ms_ssim(prediction, target) -> float:
    """torchmetrics' MS-SSIM of the affinely fitted prediction; scales reduced for small images."""
    from torchmetrics.functional.image import multiscale_structural_similarity_index_measure

    prediction, target = _t(prediction).double(), _t(target).double()
    fitted = affine_fit(prediction, target)
    size = min(target.shape[-2:])
    betas = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
    scales = max(1, min(5, int(math.floor(math.log2((size - 1) / 10))) + 1))
    betas = tuple(b / sum(betas[:scales]) for b in betas[:scales])
    value = multiscale_structural_similarity_index_measure(
        fitted[None, None].float(), target[None, None].float(),
        data_range=float(target.max() - target.min()), betas=betas, normalize="relu",
    )
    return float(value)


def micro_ms3im(prediction, target) -> float:
    """MicroMS3IM (microssim), fitted on this pair. Needs images larger than 160 px."""
    from microssim import micro_multiscale_structural_similarity

    return float(micro_multiscale_structural_similarity(np.asarray(target, np.float64), np.asarray(prediction, np.float64)))


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
