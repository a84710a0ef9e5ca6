"""U-Net velocity network v_theta(t, [x_t, c]) with a sinusoidal time embedding.

Sized like the paper's guided-diffusion U-Net (base width 32, one residual block per level) but
local by default: normalisation is per pixel over channels (``norm="channel"``) and attention is
off, so a pixel's output depends only on a bounded neighbourhood. That keeps tiled prediction equal
to whole-image prediction and memory linear in the image size (README, "Design decisions").
``norm="group"`` and ``attention_levels`` reproduce the reference's GroupNorm/attention when wanted.
The same backbone without time conditioning (``time_conditioning=False``) is the point-predictor.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn


def sinusoidal_embedding(t: torch.Tensor, dim: int) -> torch.Tensor:
    """Transformer-style embedding of t in [0, 1] (scaled by 1000 like guided diffusion)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = 1000.0 * t.float().view(-1, 1) * freqs.view(1, -1)
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)


class ChannelNorm(nn.Module):
    """LayerNorm over the channel axis of each pixel: no spatial statistics, so tiling-safe.

    On channels_last tensors (the inference layout) the pixels' channels are contiguous, so this is
    one fused ``layer_norm`` call instead of ~9 passes over the activation."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, channels, 1, 1))
        self.bias = nn.Parameter(torch.zeros(1, channels, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
            c = x.shape[1]
            pixels = x.permute(0, 2, 3, 1)  # (B, H, W, C), contiguous
            out = F.layer_norm(pixels, [c], self.weight.reshape(c), self.bias.reshape(c), self.eps)
            return out.permute(0, 3, 1, 2)  # channels_last again
        centered = x - x.mean(dim=1, keepdim=True)
        var = centered.pow(2).mean(dim=1, keepdim=True)
        return centered * torch.rsqrt(var + self.eps) * self.weight + self.bias


def make_norm(kind: str, channels: int) -> nn.Module:
    if kind == "channel":
        return ChannelNorm(channels)
    if kind == "group":
        return nn.GroupNorm(min(32, channels // 4) or 1, channels)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; expected 'channel', 'group' or 'none'")


class ResBlock(nn.Module):
    """Pre-activation residual block; the time embedding shifts and scales the features."""

    def __init__(self, cin: int, cout: int, emb_dim: int, norm: str, dropout: float):
        super().__init__()
        self.norm1 = make_norm(norm, cin)
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1)
        self.emb = nn.Linear(emb_dim, 2 * cout) if emb_dim > 0 else None
        self.norm2 = make_norm(norm, cout)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)
        self.skip = nn.Conv2d(cin, cout, 1) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.norm2(h)
        if self.emb is not None and emb is not None:
            scale, shift = self.emb(F.silu(emb)).unsqueeze(-1).unsqueeze(-1).chunk(2, dim=1)
            h = h * (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Global multi-head self-attention over all pixels (optional; breaks tiling equivalence)."""

    def __init__(self, channels: int, norm: str, heads: int = 4):
        super().__init__()
        self.norm = make_norm(norm, channels)
        self.attn = nn.MultiheadAttention(channels, heads, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        seq = self.norm(x).flatten(2).transpose(1, 2)
        out, _ = self.attn(seq, seq, seq, need_weights=False)
        return x + out.transpose(1, 2).reshape(b, c, h, w)


class Level(nn.Module):
    """Residual blocks (and optional attention) at one resolution."""

    def __init__(self, cin: int, cout: int, blocks: int, emb_dim: int, norm: str, dropout: float, attention: bool):
        super().__init__()
        self.blocks = nn.ModuleList(
            [ResBlock(cin if i == 0 else cout, cout, emb_dim, norm, dropout) for i in range(blocks)]
        )
        self.attention = SelfAttention(cout, norm) if attention else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor | None) -> torch.Tensor:
        for block in self.blocks:
            x = block(x, emb)
        return self.attention(x)


def upsample_nearest2x(x: torch.Tensor) -> torch.Tensor:
    """Nearest-neighbour 2x upsampling by broadcasting: equal to ``F.interpolate(mode="nearest")``,
    but scripting ``interpolate`` pulls in ops (antialiased Lanczos) that libtorch 2.0, deepImageJ's
    engine, cannot load. A channels_last input gives a channels_last output (one copy, no relayout)."""
    b, c, h, w = x.shape
    if x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        pixels = x.permute(0, 2, 3, 1)[:, :, None, :, None, :].expand(b, h, 2, w, 2, c)
        return pixels.reshape(b, 2 * h, 2 * w, c).permute(0, 3, 1, 2)
    return x[:, :, :, None, :, None].expand(b, c, h, 2, w, 2).reshape(b, c, 2 * h, 2 * w)


class UNet(nn.Module):
    """Velocity network. Input: x_t (out_channels) and condition (cond_channels); output: velocity.

    Any spatial size works: the input is padded (replicate) to a multiple of ``stride`` and the
    output cropped back.
    """

    def __init__(
        self,
        in_channels: int = 1,
        cond_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 32,
        channel_mults: tuple[int, ...] = (1, 2, 4),
        num_res_blocks: int = 1,
        attention_levels: tuple[int, ...] = (),
        norm: str = "channel",
        dropout: float = 0.0,
        time_conditioning: bool = True,
        step_conditioning: bool = False,
    ):
        super().__init__()
        if step_conditioning and not time_conditioning:
            raise ValueError("step_conditioning needs time_conditioning (the step size joins the time embedding)")
        if any(level >= len(channel_mults) for level in attention_levels):
            raise ValueError(f"attention_levels {attention_levels} outside 0..{len(channel_mults) - 1}")
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.cond_channels = cond_channels
        self.time_conditioning = time_conditioning
        self.step_conditioning = step_conditioning
        self.stride = 2 ** (len(channel_mults) - 1)
        self.base_channels = base_channels
        emb_dim = 4 * base_channels if time_conditioning else 0
        self.time_mlp = (
            nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if time_conditioning
            else None
        )
        # shortcut models: the step size d joins the time embedding through its own MLP, whose last
        # layer starts at zero, so a network fine-tuned from a plain run starts as that run
        self.step_mlp = (
            nn.Sequential(nn.Linear(base_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
            if step_conditioning
            else None
        )
        if self.step_mlp is not None:
            nn.init.zeros_(self.step_mlp[2].weight)
            nn.init.zeros_(self.step_mlp[2].bias)
        widths = [base_channels * m for m in channel_mults]
        self.stem = nn.Conv2d(in_channels + cond_channels, widths[0], 3, padding=1)
        self.down = nn.ModuleList()
        self.downsample = nn.ModuleList()
        cin = widths[0]
        for i, w in enumerate(widths):
            self.down.append(Level(cin, w, num_res_blocks, emb_dim, norm, dropout, i in attention_levels))
            cin = w
            last = i == len(widths) - 1  # Identity keeps the lists zippable (TorchScript)
            self.downsample.append(nn.Identity() if last else nn.Conv2d(w, w, 3, stride=2, padding=1))
        self.levels = len(widths)
        self.middle = Level(cin, cin, 1, emb_dim, norm, dropout, (len(widths) - 1) in attention_levels)
        self.up = nn.ModuleList()
        self.upsample = nn.ModuleList()
        for i in reversed(range(len(widths) - 1)):
            self.upsample.append(nn.Conv2d(cin, widths[i], 3, padding=1))
            self.up.append(
                Level(2 * widths[i], widths[i], num_res_blocks, emb_dim, norm, dropout, i in attention_levels)
            )
            cin = widths[i]
        self.head = nn.Sequential(make_norm(norm, cin), nn.SiLU(), nn.Conv2d(cin, out_channels, 3, padding=1))

    def forward(
        self, x: torch.Tensor, cond: torch.Tensor, t: torch.Tensor | None = None, d: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Velocity at (x_t, t) given ``cond``; ``d``: the step size of a shortcut network (None: 0,
        the instantaneous velocity; ignored by networks without step conditioning)."""
        h_in, w_in = x.shape[-2], x.shape[-1]
        pad_h = (-h_in) % self.stride
        pad_w = (-w_in) % self.stride
        h = torch.cat([x, cond], dim=1)
        if pad_h or pad_w:
            h = F.pad(h, (0, pad_w, 0, pad_h), mode="replicate")
        emb: torch.Tensor | None = None
        if self.time_mlp is not None:
            if t is None:
                raise ValueError("this network is time-conditioned: pass t")
            # t stays fp32 (bf16 would round 1000 t by up to 2); the embedding follows the input's dtype,
            # which is the weights' dtype when DeepSpeed runs the network in bf16/fp16
            t = t.float().reshape(-1).expand(h.shape[0])
            emb = self.time_mlp(sinusoidal_embedding(t, self.base_channels).to(h.dtype))
            if self.step_mlp is not None:
                step = torch.zeros_like(t) if d is None else d.float().reshape(-1).expand(h.shape[0])
                emb = emb + self.step_mlp(sinusoidal_embedding(step, self.base_channels).to(h.dtype))
        h = self.stem(h)
        skips: list[torch.Tensor] = []
        i = 0
        for level, downsample in zip(self.down, self.downsample):
            h = level(h, emb)
            if i < self.levels - 1:
                skips.append(h)
            h = downsample(h)
            i += 1
        h = self.middle(h, emb)
        for upsample, level in zip(self.upsample, self.up):
            h = upsample(upsample_nearest2x(h))
            h = level(torch.cat([h, skips.pop()], dim=1), emb)
        return self.head(h)[..., :h_in, :w_in]
