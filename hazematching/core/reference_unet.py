"""The velocity network of the paper's released checkpoints, re-implemented key-for-key.

HazeMatching (arXiv 2506.22397) trains torchcfm 1.0.7's ``torchcfm.models.unet.unet.UNetModel``, which
is openai/guided-diffusion's U-Net, and releases ``best_model.pth`` files that are plain
``torch.save(model.state_dict())`` of it. ``ReferenceUNet`` is our own implementation of that network
(written from its description, not copied) with exactly its state-dict layout, so those files load
with ``load_state_dict(strict=True)`` and give the same velocities, without torchcfm installed.

How it differs from our ``UNet`` (``hazematching/core/unet.py``), so weights cannot be remapped:

* time embedding of the raw t in [0, 1] (ours scales t by 1000);
* additive time conditioning in each residual block (ours: FiLM scale and shift);
* GroupNorm with 32 groups, computed in float32 (ours: per-pixel channel norm by default);
* global self-attention at the chosen downsampling factors and in the middle block, so a pixel's
  output depends on the whole tile: tiled prediction is not whole-image prediction, which is why the
  paper tiles with overlapping patches and keeps their centres.

It is written to be TorchScript-able (the exported model package scripts it) with ops that libtorch
2.0 loads: no ``F.interpolate``, no ``scaled_dot_product_attention``.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

from .unet import upsample_nearest2x


def timestep_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Guided diffusion's sinusoidal embedding, [cos, sin], of the raw t (not scaled by 1000, as in
    torchcfm), in float32 whatever the network's dtype, so t's resolution is not lost."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float().view(-1, 1) * freqs.view(1, -1)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=1)
    return emb


class GroupNorm32(nn.GroupNorm):
    """GroupNorm evaluated in float32 and cast back (guided diffusion's GroupNorm32): statistics over
    large tiles in bf16/fp16 would lose precision."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.group_norm(x.float(), self.num_groups, self.weight.float(), self.bias.float(), self.eps)
        return out.to(x.dtype)


def normalization(channels: int) -> nn.Module:
    """The reference's norm: always 32 groups, eps 1e-5, affine."""
    return GroupNorm32(32, channels)


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters, as guided diffusion does for residual outputs: a fresh block is the
    identity and a fresh network outputs 0."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class EmbedConv2d(nn.Conv2d):
    """A Conv2d with the blocks' ``(x, emb)`` signature, so the input stem keeps the reference's key
    ``input_blocks.0.0.weight`` inside a block that TorchScript calls like every other."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, self.weight, self.bias)


class EmbedSequential(nn.Sequential):
    """Children called in order with ``(x, emb)`` (guided diffusion's TimestepEmbedSequential). Every
    child takes ``emb``, so TorchScript can unroll the loop; the children are named 0, 1, ... as in
    the reference's keys (``input_blocks.1.0``, ``input_blocks.1.1``)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            x = layer(x, emb)
        return x


class ReferenceResBlock(nn.Module):
    """Guided diffusion's residual block without scale-shift norm: the time embedding is added after
    the first convolution."""

    def __init__(self, cin: int, cout: int, emb_dim: int, dropout: float):
        super().__init__()
        self.in_layers = nn.Sequential(normalization(cin), nn.SiLU(), nn.Conv2d(cin, cout, 3, padding=1))
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(emb_dim, cout))
        self.out_layers = nn.Sequential(
            normalization(cout), nn.SiLU(), nn.Dropout(dropout), zero_module(nn.Conv2d(cout, cout, 3, padding=1))
        )
        self.skip_connection = nn.Identity() if cin == cout else nn.Conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.in_layers(x)
        h = h + self.emb_layers(emb).to(h.dtype)[:, :, None, None]
        return self.skip_connection(x) + self.out_layers(h)


class ReferenceAttention(nn.Module):
    """Global self-attention over all pixels with guided diffusion's legacy head order ([q, k, v] per
    head) and q, k each scaled by C^-1/4; the softmax is taken in float32."""

    def __init__(self, channels: int, num_heads: int = 1):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"{channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.norm = normalization(channels)
        self.qkv = nn.Conv1d(channels, 3 * channels, 1)
        self.proj_out = zero_module(nn.Conv1d(channels, channels, 1))

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        b, c, height, width = x.shape
        flat = x.reshape(b, c, height * width)
        qkv = self.qkv(self.norm(flat))
        length = qkv.shape[2]
        ch = c // self.num_heads
        q, k, v = qkv.reshape(b * self.num_heads, 3 * ch, length).split(ch, dim=1)
        scale = 1.0 / math.sqrt(math.sqrt(ch))
        weight = torch.einsum("bct,bcs->bts", q * scale, k * scale)
        weight = torch.softmax(weight.float(), dim=-1).to(weight.dtype)
        a = torch.einsum("bts,bcs->bct", weight, v).reshape(b, c, length)
        return (flat + self.proj_out(a)).reshape(b, c, height, width)


class ReferenceDownsample(nn.Module):
    """Strided 3x3 convolution (guided diffusion with conv_resample)."""

    def __init__(self, channels: int):
        super().__init__()
        self.op = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.op(x)


class ReferenceUpsample(nn.Module):
    """Nearest 2x then a 3x3 convolution (guided diffusion with conv_resample); the upsampling avoids
    ``F.interpolate``, which libtorch 2.0 cannot load once scripted."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        return self.conv(upsample_nearest2x(x))


class ReferenceUNet(nn.Module):
    """torchcfm 1.0.7 / guided-diffusion ``UNetModel`` with its exact state-dict keys (see the module
    docstring). Defaults are the released P=128 configuration; P=64 used ``channel_mults=(1, 2, 3, 4)``,
    ``attention_resolutions=(4,)``.

    ``attention_resolutions`` are downsampling factors (ds = 1, 2, 4, ...), as ``UNetModel`` takes
    them; torchcfm's wrapper turns the resolution 16 into ds = image_size // 16. Input sizes that are
    not a multiple of ``stride`` are padded (replicate) and the output cropped back.
    """

    def __init__(
        self,
        in_channels: int = 1,
        cond_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 1, 2, 3, 4),
        num_res_blocks: int = 1,
        attention_resolutions: tuple[int, ...] = (8,),
        num_heads: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.in_channels = in_channels
        self.cond_channels = cond_channels
        self.out_channels = out_channels
        self.base_channels = base_channels
        self.time_conditioning = True
        self.step_conditioning = False
        self.fixed_window = True  # global attention: tile at the size it was trained at (core/tiles.py)
        self.stride = 2 ** (len(channel_mults) - 1)
        emb_dim = 4 * base_channels
        self.time_embed = nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))

        ch = base_channels * channel_mults[0]
        self.input_blocks = nn.ModuleList([EmbedSequential(EmbedConv2d(in_channels + cond_channels, ch, 3, padding=1))])
        skip_chans = [ch]
        ds = 1
        for level, mult in enumerate(channel_mults):
            for _ in range(num_res_blocks):
                layers: list[nn.Module] = [ReferenceResBlock(ch, base_channels * mult, emb_dim, dropout)]
                ch = base_channels * mult
                if ds in attention_resolutions:
                    layers.append(ReferenceAttention(ch, num_heads))
                self.input_blocks.append(EmbedSequential(*layers))
                skip_chans.append(ch)
            if level != len(channel_mults) - 1:
                self.input_blocks.append(EmbedSequential(ReferenceDownsample(ch)))
                skip_chans.append(ch)
                ds *= 2

        self.middle_block = EmbedSequential(
            ReferenceResBlock(ch, ch, emb_dim, dropout),
            ReferenceAttention(ch, num_heads),
            ReferenceResBlock(ch, ch, emb_dim, dropout),
        )

        self.output_blocks = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mults))):
            for i in range(num_res_blocks + 1):
                layers = [ReferenceResBlock(ch + skip_chans.pop(), base_channels * mult, emb_dim, dropout)]
                ch = base_channels * mult
                if ds in attention_resolutions:
                    layers.append(ReferenceAttention(ch, num_heads))
                if level and i == num_res_blocks:
                    layers.append(ReferenceUpsample(ch))
                    ds //= 2
                self.output_blocks.append(EmbedSequential(*layers))

        self.out = nn.Sequential(normalization(ch), nn.SiLU(), zero_module(nn.Conv2d(ch, out_channels, 3, padding=1)))

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor | None = None, d: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Velocity at (x_t, t) given ``cond``. ``t``: 0-dim, (1,) or (B,), in [0, 1]; ``d`` is accepted
        for the sampler's shortcut call convention and ignored (no step conditioning)."""
        if t is None:
            raise ValueError("this network is time-conditioned: pass t")
        h_in, w_in = x.shape[-2], x.shape[-1]
        pad_h = (-h_in) % self.stride
        pad_w = (-w_in) % self.stride
        h = torch.cat([x, cond], dim=1)
        if pad_h or pad_w:
            h = F.pad(h, (0, pad_w, 0, pad_h), mode="replicate")
        t = t.float().reshape(-1).expand(h.shape[0])
        emb = self.time_embed(timestep_embedding(t, self.base_channels).to(h.dtype))
        skips: list[torch.Tensor] = []
        for block in self.input_blocks:
            h = block(h, emb)
            skips.append(h)
        h = self.middle_block(h, emb)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), emb)
        return self.out(h)[..., :h_in, :w_in]
