"""Image-quality metrics on target-scale images."""

import torch


def affine_fit(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Least-squares a * prediction + b against target: removes any brightness/offset mismatch."""
    p = prediction.double().flatten()
    t = target.double().flatten()
    pc = p - p.mean()
    a = (pc * (t - t.mean())).sum() / (pc * pc).sum().clamp_min(1e-12)
    return (a * (prediction.double() - p.mean()) + t.mean()).to(target.dtype)


def psnr(prediction: torch.Tensor, target: torch.Tensor, data_range: float | None = None) -> float:
    mse = torch.mean((prediction.double() - target.double()) ** 2)
    if data_range is None:
        data_range = float(target.max() - target.min())
    return float(10 * torch.log10(data_range**2 / mse.clamp_min(1e-20)))


def range_invariant_psnr(prediction: torch.Tensor, target: torch.Tensor) -> float:
    """PSNR after the best affine mapping of the prediction onto the target, with the target's range."""
    return psnr(affine_fit(prediction, target), target)
