"""LPIPS and FID from backbone weights the user has locally (nothing is ever downloaded).

Both backbones are TorchScript files, so they load with ``torch.jit.load`` (no unpickling) and need
no torchvision here:

* LPIPS: ``--lpips-backbone`` maps (N, 3, H, W) images in [-1, 1] to a list of L feature maps
  (e.g. AlexNet's five ReLU outputs, as in the LPIPS paper); ``--lpips-linear`` is a safetensors
  file with non-negative per-channel weights ``lin0`` .. ``lin{L-1}`` (shape (C_l,) or (1, C_l, 1, 1)).
  LPIPS = sum_l mean_xy sum_c w_lc (f_l(x) / |f_l(x)| - f_l(y) / |f_l(y)|)^2.
* FID: ``--fid-backbone`` maps (N, 3, H, W) images in [0, 1] to (N, D) features (e.g. Inception-v3
  pool features); FID = |mu_1 - mu_2|^2 + Tr(S_1 + S_2 - 2 (S_1 S_2)^(1/2)).

Images are compared on non-overlapping 64 x 64 patches (as in the paper), grey values scaled to
[0, 1] by the target's range and repeated to three channels.
"""

from pathlib import Path

import numpy as np
import torch
from scipy import linalg

PATCH = 64


class BackboneError(ValueError):
    """A backbone or weight file that cannot be used, with the reason."""


def load_torchscript(path: Path) -> torch.jit.ScriptModule:
    path = Path(path)
    if not path.is_file():
        raise BackboneError(f"{path}: backbone file does not exist")
    try:
        return torch.jit.load(str(path), map_location="cpu").eval()
    except Exception as exc:
        raise BackboneError(f"{path}: not a TorchScript file ({type(exc).__name__}: {exc})") from exc


def patches(image: np.ndarray, lo: float, hi: float, size: int = PATCH) -> torch.Tensor:
    """Non-overlapping size x size patches as (N, 3, size, size) in [0, 1]."""
    h, w = (image.shape[0] // size) * size, (image.shape[1] // size) * size
    if h == 0 or w == 0:
        raise ValueError(f"image of shape {image.shape} is smaller than one {size} x {size} patch")
    scaled = np.clip((np.asarray(image[:h, :w], np.float32) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
    tiles = scaled.reshape(h // size, size, w // size, size).transpose(0, 2, 1, 3).reshape(-1, 1, size, size)
    return torch.from_numpy(np.ascontiguousarray(tiles)).expand(-1, 3, -1, -1)


class LPIPS:
    def __init__(self, backbone_path: Path, linear_path: Path):
        from safetensors.torch import load_file

        self.backbone = load_torchscript(backbone_path)
        try:
            weights = load_file(str(linear_path))
        except Exception as exc:
            raise BackboneError(f"{linear_path}: cannot read LPIPS linear weights as safetensors ({exc})") from exc
        keys = sorted((k for k in weights if k.startswith("lin")), key=lambda k: int(k[3:]))
        if not keys:
            raise BackboneError(f"{linear_path}: no 'lin0', 'lin1', ... tensors")
        self.weights = [weights[k].reshape(1, -1, 1, 1).float() for k in keys]

    @torch.no_grad()
    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-patch distance for (N, 3, H, W) inputs in [0, 1]."""
        fx, fy = self.backbone(2 * x - 1), self.backbone(2 * y - 1)
        if len(fx) != len(self.weights):
            raise BackboneError(
                f"backbone returns {len(fx)} feature maps but there are {len(self.weights)} linear layers"
            )
        total = torch.zeros(x.shape[0])
        for a, b, w in zip(fx, fy, self.weights):
            if a.shape[1] != w.shape[1]:
                raise BackboneError(f"feature map with {a.shape[1]} channels but linear layer with {w.shape[1]}")
            a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
            total += (w * (a - b) ** 2).sum(1).mean(dim=(1, 2))
        return total


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """Fréchet distance between Gaussian fits of two feature sets (rows are samples)."""
    if len(features_a) < 2 or len(features_b) < 2:
        raise ValueError("FID needs at least two patches per set")
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    cov_a = np.atleast_2d(np.cov(features_a, rowvar=False))
    cov_b = np.atleast_2d(np.cov(features_b, rowvar=False))
    covmean, _ = linalg.sqrtm(cov_a @ cov_b, disp=False)
    if not np.isfinite(covmean).all():  # singular product: regularise as pytorch-fid does
        offset = np.eye(len(cov_a)) * 1e-6
        covmean = linalg.sqrtm((cov_a + offset) @ (cov_b + offset))
    covmean = np.real(covmean)
    return float(np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2 * np.trace(covmean))


class FID:
    def __init__(self, backbone_path: Path):
        self.backbone = load_torchscript(backbone_path)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> np.ndarray:
        out = self.backbone(x)
        if out.dim() != 2:
            out = out.flatten(1)
        return out.double().numpy()

    def __call__(self, real: list[torch.Tensor], fake: list[torch.Tensor]) -> float:
        return frechet_distance(
            np.concatenate([self.features(p) for p in real]), np.concatenate([self.features(p) for p in fake])
        )
