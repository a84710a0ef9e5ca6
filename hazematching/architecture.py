"""One description per network kind: each field (default, bounds, help) is declared here once, and
the trainer's flags, the configuration reference, a run's ``config.json``, ``load_model`` and the
exported package all read it from here.

``unet`` is this project's network (``core/unet.py``); ``reference`` is the network of the paper's
released checkpoints (``core/reference_unet.py``: torchcfm 1.0.7's guided-diffusion U-Net layout).
Fields marked ``set_by="trainer"`` follow from the objective and are not flags.
"""

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, TypeAdapter, model_serializer, model_validator
from torch import nn

from hazematching.core.networks import build_network

DERIVED = {"set_by": "trainer"}
KIND_HELP = (
    "network: unet (this project's; tiles equal the whole image) or reference (the network of the paper's "
    "released checkpoints)"
)


def is_derived(field) -> bool:
    """A field the trainer sets from the objective: not a flag, not in a run's ``training.model``."""
    return bool((field.json_schema_extra or {}).get("set_by"))


class _Network(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: str  # first in every dump; each kind narrows it to its Literal
    in_channels: int = Field(1, ge=1, description="channels of the state x_t", json_schema_extra=DERIVED)
    cond_channels: int = Field(1, ge=1, description="channels of the condition (widefield)", json_schema_extra=DERIVED)
    out_channels: int = Field(1, ge=1, description="channels of the velocity", json_schema_extra=DERIVED)
    base_channels: int = Field(32, ge=4, description="feature channels of the first level (network width)")
    num_res_blocks: int = Field(1, ge=1, description="residual blocks per level")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout probability inside residual blocks")

    @model_serializer(mode="wrap")
    def _plain_unet_has_no_kind(self, handler):
        # runs of the first network never wrote a kind: keep their config.json byte-compatible
        data = handler(self)
        if data.get("kind") == "unet":
            data.pop("kind")
        return data

    @property
    def stride(self) -> int:
        """Input sizes are padded to a multiple of this (2 ** (levels - 1))."""
        return 2 ** (len(self.channel_mults) - 1)

    def build(self) -> nn.Module:
        return build_network(self.model_dump())

    def flags(self) -> dict:
        """The fields a user sets (what the trainer derives left out): a run's ``training.model``."""
        return {
            name: value
            for name, value in self.model_dump(mode="json").items()
            if not is_derived(type(self).model_fields[name])
        }

    def _check_mults(self) -> None:
        if not self.channel_mults or any(m < 1 for m in self.channel_mults):
            raise ValueError(f"channel_mults must be positive integers, got {self.channel_mults}")


class UNetArchitecture(_Network):
    """This project's U-Net: local (per-pixel channel norm, no attention) so tiles equal the whole image."""

    kind: Literal["unet"] = Field("unet", description=KIND_HELP)
    channel_mults: tuple[int, ...] = Field(
        (1, 2, 4), description="width multiplier per level; L levels downsample by 2 ** (L - 1)"
    )
    attention_levels: tuple[int, ...] = Field((), description="unet: levels (0-based) with self-attention")
    norm: Literal["channel", "group", "none"] = Field("channel", description="unet: normalisation in residual blocks")
    time_conditioning: bool = Field(True, description="False: the U-Net point predictor", json_schema_extra=DERIVED)
    step_conditioning: bool = Field(False, description="shortcut models (core/shortcut.py)", json_schema_extra=DERIVED)

    @model_validator(mode="after")
    def _check(self):
        self._check_mults()
        bad = [lvl for lvl in self.attention_levels if not 0 <= lvl < len(self.channel_mults)]
        if bad:
            raise ValueError(f"attention_levels {bad} outside 0..{len(self.channel_mults) - 1}")
        return self


class ReferenceArchitecture(_Network):
    """The paper's network (guided-diffusion U-Net: GroupNorm 32, additive time embedding of raw t,
    global attention within a tile), as its released checkpoints were trained (paper-models.md §1.2)."""

    kind: Literal["reference"] = Field("reference", description=KIND_HELP)
    channel_mults: tuple[int, ...] = Field(
        (1, 1, 2, 3, 4), description="width multiplier per level; L levels downsample by 2 ** (L - 1)"
    )
    attention_resolutions: tuple[int, ...] = Field(
        (8,), description="reference: downsampling factors (1, 2, 4, ...) with self-attention (and the middle block)"
    )
    num_heads: int = Field(1, ge=1, description="reference: attention heads")

    @model_validator(mode="after")
    def _check(self):
        self._check_mults()
        factors = [2**i for i in range(len(self.channel_mults))]
        odd = [self.base_channels * m for m in self.channel_mults if (self.base_channels * m) % 32]
        if odd:
            raise ValueError(
                f"base_channels x channel_mults gives {odd} channels: the reference network's GroupNorm has 32 "
                "groups, so every level needs a multiple of 32 channels"
            )
        bad = [r for r in self.attention_resolutions if r not in factors]
        if bad:
            raise ValueError(f"attention_resolutions {bad} are not downsampling factors of this network ({factors})")
        return self


KINDS: dict[str, type[_Network]] = {"unet": UNetArchitecture, "reference": ReferenceArchitecture}


def _kind(value) -> str:
    return value.get("kind", "unet") if isinstance(value, dict) else getattr(value, "kind", "unet")


Architecture = Annotated[
    Annotated[UNetArchitecture, Tag("unet")] | Annotated[ReferenceArchitecture, Tag("reference")],
    Discriminator(_kind),
]
ARCHITECTURE = TypeAdapter(Architecture)


def parse_architecture(data: dict) -> UNetArchitecture | ReferenceArchitecture:
    """A stored architecture dict (no ``kind``: the U-Net) as its typed description."""
    return ARCHITECTURE.validate_python(data)
