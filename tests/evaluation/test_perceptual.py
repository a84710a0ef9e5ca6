import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from hazematching.evaluation.perceptual import FID, LPIPS, BackboneError, frechet_distance, patches


class Identity(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x]


class TwoConvs(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.a = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.b = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h = torch.relu(self.a(x))
        return [h, torch.relu(self.b(h))]


class MeanFeatures(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def script(module, path):
    torch.jit.script(module).save(str(path))
    return path


def test_lpips_hand_case_and_ordering(tmp_path):
    identity = script(Identity(), tmp_path / "id.pt")
    save_file({"lin0": torch.ones(3)}, tmp_path / "lin.safetensors")
    lpips = LPIPS(identity, tmp_path / "lin.safetensors")
    x = torch.full((1, 3, 8, 8), 0.75)  # -> +0.5 after scaling to [-1, 1]
    y = torch.full((1, 3, 8, 8), 0.25)  # -> -0.5: unit vectors (1,1,1)/sqrt3 vs -(1,1,1)/sqrt3
    assert float(lpips(x, y)[0]) == pytest.approx(4.0, rel=1e-6)
    assert float(lpips(x, x)[0]) == 0.0

    convs = script(TwoConvs(), tmp_path / "convs.pt")
    save_file({"lin0": torch.rand(8), "lin1": torch.rand(1, 16, 1, 1)}, tmp_path / "lin2.safetensors")
    lpips = LPIPS(convs, tmp_path / "lin2.safetensors")
    rng = np.random.default_rng(0)
    image = rng.random((128, 128)).astype(np.float32)
    clean = patches(image, 0.0, 1.0)
    small = patches(image + rng.normal(0, 0.02, image.shape).astype(np.float32), 0.0, 1.0)
    large = patches(image + rng.normal(0, 0.3, image.shape).astype(np.float32), 0.0, 1.0)
    assert clean.shape == (4, 3, 64, 64)
    assert 0 < float(lpips(small, clean).mean()) < float(lpips(large, clean).mean())
    save_file({"lin0": torch.rand(8)}, tmp_path / "short.safetensors")
    with pytest.raises(BackboneError, match="2 feature maps but there are 1"):
        LPIPS(convs, tmp_path / "short.safetensors")(clean, clean)


def test_frechet_distance_closed_form():
    rng = np.random.default_rng(1)
    mu = np.array([1.0, -2.0, 0.5])
    a = rng.normal(0, 1, (40000, 3))
    b = mu + rng.normal(0, 2, (40000, 3))
    # |mu|^2 + Tr(I + 4I - 2 * 2I) = |mu|^2 + 3
    assert frechet_distance(a, b) == pytest.approx(float(mu @ mu) + 3, rel=0.03)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError):
        frechet_distance(a[:1], b)


def test_fid_with_a_local_backbone(tmp_path):
    fid = FID(script(MeanFeatures(), tmp_path / "f.pt"))
    rng = np.random.default_rng(2)
    real = [patches(rng.random((256, 256)).astype(np.float32), 0.0, 1.0) for _ in range(4)]
    same = [patches(rng.random((256, 256)).astype(np.float32), 0.0, 1.0) for _ in range(4)]
    darker = [patches(0.5 * rng.random((256, 256)).astype(np.float32), 0.0, 1.0) for _ in range(4)]
    assert fid(real, same) < 0.01 < fid(real, darker)


def test_bad_backbone_files(tmp_path):
    with pytest.raises(BackboneError, match="does not exist"):
        FID(tmp_path / "missing.pt")
    (tmp_path / "junk.pt").write_bytes(b"not torchscript")
    with pytest.raises(BackboneError, match="not a TorchScript file"):
        FID(tmp_path / "junk.pt")
    with pytest.raises(ValueError, match="smaller than one 64 x 64 patch"):
        patches(np.zeros((32, 100)), 0, 1)
