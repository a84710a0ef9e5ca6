"""ReferenceUNet against torchcfm 1.0.7's UNetModel, the network of the paper's released checkpoints.

torchcfm is a test-only dependency (``pip install --no-deps torchcfm==1.0.7``); it is imported without
a skip so that a missing install fails loudly instead of silently dropping the compatibility check.
"""

import io
import sys
import types

import pytest
import torch

from hazematching.core.reference_unet import ReferenceUNet

# the released configurations: patch size P -> channel_mult; attention at ds = P // 16
CONFIGS = {128: (1, 1, 2, 3, 4), 64: (1, 2, 3, 4)}
PARAMETERS = {128: 3_704_097, 64: 3_594_625}


def torchcfm_unet_class():
    """torchcfm's guided-diffusion UNetModel. The package __init__ imports POT (``ot``), which the
    U-Net does not use; a stub module stands in for it. (``torchcfm.models.unet.UNetModel`` is the
    wrapper with other arguments: the reference is the class in ``unet.unet``.)"""
    sys.modules.setdefault("ot", types.ModuleType("ot"))
    from torchcfm.models.unet.unet import UNetModel

    return UNetModel


def perturb(model: torch.nn.Module, seed: int = 0) -> None:
    """Make the zero-initialised layers active, so the comparison covers every weight."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)


@pytest.fixture(scope="module", params=sorted(CONFIGS, reverse=True), ids=lambda p: f"P{p}")
def pair(request, tmp_path_factory):
    """(P, torchcfm model with perturbed weights, ReferenceUNet loaded from its saved state dict)."""
    patch = request.param
    # UNetModel takes attention_resolutions as downsampling factors (ds); the paper's wrapper
    # passes image_size // 16
    reference = torchcfm_unet_class()(
        image_size=patch,
        in_channels=2,
        model_channels=32,
        out_channels=1,
        num_res_blocks=1,
        attention_resolutions=(patch // 16,),
        channel_mult=CONFIGS[patch],
        num_heads=1,
    ).eval()
    perturb(reference)
    path = tmp_path_factory.mktemp(f"P{patch}") / "best_model.pth"
    torch.save(reference.state_dict(), path)
    ours = ReferenceUNet(channel_mults=CONFIGS[patch], attention_resolutions=(patch // 16,)).eval()
    ours.load_state_dict(torch.load(path, weights_only=True), strict=True)
    return patch, reference, ours


def relative_error(ours: torch.Tensor, ref: torch.Tensor) -> float:
    return ((ours - ref).abs().max() / ref.abs().max()).item()


def test_state_dict_layout_matches_torchcfm(pair):
    patch, reference, ours = pair
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in ours.state_dict().items()}
    assert set(got) == set(expected)
    assert got == expected
    assert sum(p.numel() for p in ours.parameters()) == PARAMETERS[patch]


def test_outputs_match_torchcfm(pair):
    patch, reference, ours = pair
    generator = torch.Generator().manual_seed(1)
    x, cond = torch.randn(2, 2, 1, 64, 64, generator=generator)
    with torch.no_grad():
        t = torch.tensor([0.15, 0.8])  # batched t
        ref = reference(t, torch.cat([x, cond], dim=1))
        assert ref.abs().max() > 0.1
        assert relative_error(ours(x, cond, t), ref) <= 1e-6
        t0 = torch.tensor(0.4)  # 0-dim t, as the sampler passes it
        ref0 = reference(t0, torch.cat([x, cond], dim=1))
        assert relative_error(ours(x, cond, t0), ref0) <= 1e-6
        assert torch.equal(ours(x, cond, t0.reshape(1)), ours(x, cond, t0))
        assert torch.equal(ours(x, cond, t0, torch.tensor(0.5)), ours(x, cond, t0))  # d is ignored
        if patch == 128:  # the training patch size itself
            x, cond = torch.randn(2, 1, 1, 128, 128, generator=generator)
            ref = reference(t0, torch.cat([x, cond], dim=1))
            assert relative_error(ours(x, cond, t0), ref) <= 1e-6


def test_fresh_network_outputs_zero():
    net = ReferenceUNet(channel_mults=(1, 2), attention_resolutions=(2,))
    x = torch.randn(2, 1, 16, 16)
    assert torch.equal(net(x, x, torch.rand(2)), torch.zeros_like(x))


def small_network() -> ReferenceUNet:
    torch.manual_seed(0)
    net = ReferenceUNet(channel_mults=(1, 2), attention_resolutions=(2,)).eval()
    perturb(net)
    return net


def test_torchscript_matches_eager():
    net = small_network()
    scripted = torch.jit.script(net)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    loaded = torch.jit.load(buffer)
    x, cond = torch.randn(2, 2, 1, 24, 20)
    with torch.no_grad():
        eager = net(x, cond, torch.tensor(0.3))
        assert eager.abs().max() > 0
        assert torch.allclose(scripted(x, cond, torch.tensor(0.3)), eager, rtol=0, atol=1e-6)
        assert torch.allclose(loaded(x, cond, torch.tensor([0.3, 0.3])), eager, rtol=0, atol=1e-6)


def test_any_input_size():
    net = small_network()
    x = torch.randn(1, 1, 70, 45)
    with torch.no_grad():
        assert net(x, x, torch.tensor(0.5)).shape == x.shape
    with pytest.raises(ValueError, match="pass t"):
        net(x, x)
