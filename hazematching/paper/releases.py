"""The paper's five released checkpoints and data sets, as one frozen table.

The facts (sha256s, patch sizes, normalisation statistics, inference quirks) are the authors' own
(github.com/rayanirban/HazeMatching: ``scripts/download_*.py``, ``hazematching/datasets/*.py``); they
are kept here so that a download can be verified and a checkpoint recognised by its hash alone.

In the paper's paired TIFFs channel 0 is the confocal target and channel 1 the widefield input; the
statistics below follow that order (``target_*`` = channel 0, ``input_*`` = channel 1).
"""

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

DEFAULT_BASE_URL = "https://download.fht.org/jug/hazematching/"
BASE_URL_ENV = "HAZEMATCHING_RELEASE_URL"  # e.g. a mirror, or 127.0.0.1 in the tests


def base_url() -> str:
    """The release server, read at call time so that ``HAZEMATCHING_RELEASE_URL`` can point elsewhere."""
    url = os.environ.get(BASE_URL_ENV) or DEFAULT_BASE_URL
    return url if url.endswith("/") else url + "/"


@dataclass(frozen=True)
class Normalisation:
    """``(x - mean) / std`` per channel, as the released model was trained with."""

    target_mean: float  # channel 0, confocal
    target_std: float
    input_mean: float  # channel 1, widefield
    input_std: float


# The authors pick the zebrafish statistics with the first "ch0"/"ch1"/"ch2" in the file *name*
# (re.search(r"ch([0-2])", name)); the same rule is kept so that their files get their statistics.
_SOURCE_CHANNEL = re.compile(r"ch([0-2])")
ALL = "all"  # the key of the single statistics set of every data set except zebrafish


@dataclass(frozen=True)
class Release:
    """One released data set and the checkpoint trained on it."""

    name: str
    description: str
    checkpoint_sha256: str
    data_sha256: str
    patch_size: int  # P: training crops and inference tiles are P x P
    channel_mult: tuple[int, ...]
    attention_resolutions: tuple[int, ...]  # downsampling factors with attention (16 x 16 tokens)
    num_parameters: int
    normalisation: Mapping[str, Normalisation] = field(hash=False)  # "all", or "ch0"/"ch1"/"ch2" (zebrafish)
    inference_border: int = 0  # pixels cut from each side of a raw image before inference (microtubule: 56)
    denormalise_predictions: bool = True  # neuron: False, predictions stay in normalised units
    # the paper's folder in the archive -> this project's split folder (train/, val/, test/)
    splits: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({"train_crop": "train", "val_crop": "val", "test": "test"}), hash=False
    )

    @property
    def inner_crop(self) -> int:
        """The centre of each tile that is kept when tiles are stitched (P/2)."""
        return self.patch_size // 2

    @property
    def checkpoint_url(self) -> str:
        return f"{base_url()}checkpoints/{self.name}/best_model.pth"

    @property
    def data_url(self) -> str:
        return f"{base_url()}data/{self.name}.zip"

    def normalisation_for(self, filename: str = "") -> Normalisation:
        """The statistics for one file: zebrafish's depend on the ``ch0/ch1/ch2`` token in its name."""
        if ALL in self.normalisation:
            return self.normalisation[ALL]
        name = re.split(r"[\\/]", str(filename))[-1]
        match = _SOURCE_CHANNEL.search(name)
        if match is None:
            raise ValueError(
                f"{filename!r}: the {self.name} statistics depend on the source channel, and the file name "
                f"holds no 'ch0', 'ch1' or 'ch2'; rename the file so that it says which channel it is"
            )
        return self.normalisation[f"ch{match.group(1)}"]


def _one(target_mean: float, input_mean: float, target_std: float, input_std: float) -> Mapping[str, Normalisation]:
    return MappingProxyType({ALL: Normalisation(target_mean, target_std, input_mean, input_std)})


_P128 = dict(patch_size=128, channel_mult=(1, 1, 2, 3, 4), attention_resolutions=(8,), num_parameters=3_704_097)

RELEASES: tuple[Release, ...] = (
    Release(
        name="zebrafish",
        description="Zebrafish: real widefield/confocal pairs, statistics per source channel (ch0/ch1/ch2 in the name)",
        checkpoint_sha256="9e3bdfcdce89ed7d93d8cbc189e00d05d44c2b35c03934e1235ffe7104684cb4",
        data_sha256="4a5e74dd0db583e3f082516cac17cd87f91c3df2327665a8a8f5bb295bc2ed87",
        normalisation=MappingProxyType(
            {
                "ch0": Normalisation(87.74069, 51.070114, 176.03, 39.342876),
                "ch1": Normalisation(53.154064, 30.28169, 155.55043, 23.21549),
                "ch2": Normalisation(62.870373, 32.791805, 162.67065, 27.638577),
            }
        ),
        **_P128,
    ),
    Release(
        name="organoids1",
        description="Organoids1: real widefield/confocal pairs",
        checkpoint_sha256="0757e308aff6f9fe3ed619a3ce190ab7210e9ed2fdfb002c2ef47752d126e0b6",
        data_sha256="96093963ba26a5f9525e7024db84e35e143983f025e58206318a76672114aad7",
        normalisation=_one(493.80344, 1325.1595, 311.96014, 155.96614),
        **_P128,
    ),
    Release(
        name="organoids2",
        description="Organoids2: real widefield/confocal pairs",
        checkpoint_sha256="329621425efcdc37063701daf3d2b7ea26f006557e3a57a08d17258d22a874d6",
        data_sha256="6a72eac8aaf9a92f23c5ca98a6f8b6129bccee7690beb6c00e309c575a9da544",
        normalisation=_one(2480.7273, 7911.6943, 2576.4062, 6652.056),
        **_P128,
    ),
    Release(
        name="microtubule",
        description="Microtubule: simulated pairs; inference first cuts 56 pixels from each side",
        checkpoint_sha256="20344df5748f3eb36294d80bed67be52a37c095d5d7138d8ec16dceca7a2875a",
        data_sha256="15c682afaab73e7086d36230a68119f04185eceb0a48336f0097c3e7b4ad53d9",
        normalisation=_one(50.924667, 145.08662, 31.688, 27.819897),
        inference_border=56,
        **_P128,
    ),
    Release(
        name="neuron",
        description="Neuron: simulated pairs, 64-pixel patches; predictions stay in normalised units",
        checkpoint_sha256="2158fe4df870540885d3691cb3ec41b6db5482786106a5f03f24aedfead302e9",
        data_sha256="3930eb8faab6968c93644bf4f627025879880e0d17bd5dc572cbcad1257c6b36",
        patch_size=64,
        channel_mult=(1, 2, 3, 4),
        attention_resolutions=(4,),
        num_parameters=3_594_625,
        normalisation=_one(37881.363, 101.10135, 116733.914, 2.7681978),
        denormalise_predictions=False,
        splits=MappingProxyType({"train": "train", "val": "val", "test": "test"}),
    ),
)

NAMES: tuple[str, ...] = tuple(r.name for r in RELEASES)


def get(name: str) -> Release:
    """The release called ``name`` (case, spaces, '-' and '_' are ignored, as the authors' scripts do)."""
    key = re.sub(r"[\s_-]", "", str(name).lower())
    for release in RELEASES:
        if release.name == key:
            return release
    raise ValueError(f"unknown paper data set {name!r}; choose one of {', '.join(NAMES)}")


def _digest(digest: str) -> str:
    digest = str(digest).strip().lower()
    return digest.removeprefix("sha256:")


def by_sha256(digest: str, kind: str = "checkpoint") -> Release | None:
    """The release whose checkpoint (``kind="checkpoint"``) or data zip (``kind="data"``) has this sha256.

    Recognises a released file by content alone, whatever it was renamed to; ``None`` if it is not one."""
    if kind not in ("checkpoint", "data"):
        raise ValueError(f"kind must be 'checkpoint' or 'data', got {kind!r}")
    digest = _digest(digest)
    for release in RELEASES:
        if digest == (release.checkpoint_sha256 if kind == "checkpoint" else release.data_sha256):
            return release
    return None


def summary_lines() -> list[str]:
    """One line per release, for a command that lists what can be downloaded."""
    return [
        f"{r.name:<12} P={r.patch_size:<4} {r.num_parameters / 1e6:.2f}M parameters  {r.description}" for r in RELEASES
    ]
