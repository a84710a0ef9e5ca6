"""The weight entries: TorchScript (what deepImageJ runs) and the state dict with a generated
single-file architecture that imports torch only."""

import ast
from pathlib import Path

import torch

import hazematching.core
from hazematching.core import Dehazer

from .description import sha256

CORE_DIR = Path(hazematching.core.__file__).parent
# dependency order
CORE_FILES = ("noise.py", "tiles.py", "unet.py", "reference_unet.py", "networks.py", "sampler.py", "dehazer.py")


def strip_relative_imports(source: str) -> str:
    """``source`` without its module-level relative imports (single- or multi-line), found by ``ast``."""
    dropped = set()
    for node in ast.parse(source).body:
        if isinstance(node, ast.ImportFrom) and node.level > 0:
            dropped.update(range(node.lineno - 1, node.end_lineno))
    return "\n".join(line for i, line in enumerate(source.splitlines()) if i not in dropped)


def architecture_source() -> str:
    """The core modules as one file (relative imports dropped): the state-dict architecture."""
    parts = ['"""HazeMatching network and sampler (generated from hazematching.core; imports torch only)."""\n']
    for name in CORE_FILES:
        parts.append(f"# ---- {name} ----\n{strip_relative_imports((CORE_DIR / name).read_text())}\n")
    return "\n".join(parts)


def weight_entries(tmp: Path, formats: tuple[str, ...], scripted, model: Dehazer, kwargs: dict) -> dict:
    """The weight entries: TorchScript (what deepImageJ runs) and the state dict with its architecture."""
    from bioimageio.spec.model import v0_5 as bmz

    weights = {}
    pytorch_version = bmz.Version(torch.__version__.split("+")[0])
    if "torchscript" in formats:
        scripted.save(str(tmp / "hazematching_torchscript.pt"))
        weights["torchscript"] = bmz.TorchscriptWeightsDescr(
            source=tmp / "hazematching_torchscript.pt",
            sha256=sha256(tmp / "hazematching_torchscript.pt"),
            pytorch_version=pytorch_version,
            parent="pytorch_state_dict" if "pytorch_state_dict" in formats else None,
        )
    if "pytorch_state_dict" in formats:
        (tmp / "hazematching_architecture.py").write_text(architecture_source())
        torch.save(model.state_dict(), tmp / "hazematching_state_dict.pt")
        weights["pytorch_state_dict"] = bmz.PytorchStateDictWeightsDescr(
            source=tmp / "hazematching_state_dict.pt",
            sha256=sha256(tmp / "hazematching_state_dict.pt"),
            architecture=bmz.ArchitectureFromFileDescr(
                source=tmp / "hazematching_architecture.py",
                sha256=sha256(tmp / "hazematching_architecture.py"),
                callable=bmz.Identifier("Dehazer"),
                kwargs=kwargs,
            ),
            pytorch_version=pytorch_version,
        )
    return weights
