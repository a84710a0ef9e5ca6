"""The model description (RDF 0.5) from bioimageio.spec classes: one input, one output [mean, std]."""

import hashlib
from pathlib import Path

from hazematching.settings import InferenceSettings

from .geometry import Geometry

PAPER_DOI = "10.48550/arXiv.2506.22397"


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_description(
    tmp: Path,
    settings: InferenceSettings,
    geometry: Geometry,
    weights: dict,
    name: str,
    authors: list[str] | None,
    maintainers: list[str] | None,
    license: str,
    trained_for_anchor: bool = False,
    calibrated: bool = False,
):
    """The RDF, from bioimageio.spec classes: one input, one output with channels [mean, std].
    ``trained_for_anchor``: the run was trained with --mean-anchor-fraction (said when the MMSE is the anchor);
    ``calibrated``: the model applies the run's std calibration (said in the output's description)."""
    from bioimageio.spec.model import v0_5 as bmz

    halo, min_size, step = geometry.halo, geometry.min_size, geometry.step
    samples, steps, solver = settings.samples, settings.steps, settings.solver
    space_in = [
        bmz.SpaceInputAxis(id=bmz.AxisId(a), size=bmz.ParameterizedSize(min=min_size, step=step)) for a in ("y", "x")
    ]
    space_out = [
        bmz.SpaceOutputAxisWithHalo(
            id=bmz.AxisId(a),
            size=bmz.SizeReference(tensor_id=bmz.TensorId("widefield"), axis_id=bmz.AxisId(a)),
            halo=halo,
        )
        for a in ("y", "x")
    ]
    return bmz.ModelDescr(
        name=name,
        description=(
            "Dehazes 2D widefield fluorescence images into confocal-like images with guided conditional flow "
            f"matching (HazeMatching). One call runs {samples} posterior samples x {steps} {solver} steps and "
            + (
                "returns the network's posterior-mean prediction v(0, 0, c) as the MMSE ("
                + (
                    "trained for it with --mean-anchor-fraction"
                    if trained_for_anchor
                    else "not trained for it: the t = 0 limit of the paper's objective"
                )
                + ") and the samples' per-pixel std"
                if settings.mmse == "anchor"
                else ("draws them in antithetic pairs (x0, -x0) and " if settings.sample_noise == "antithetic" else "")
                + "returns their mean (MMSE) and per-pixel std"
            )
            + " as two output channels."
        ),
        authors=[bmz.Author(name=a) for a in authors],
        maintainers=[bmz.Maintainer(github_user=m) for m in (maintainers or [])],
        cite=[
            bmz.CiteEntry(
                text="Ray, A., Ashesh, Jug, F. HazeMatching: Dehazing Light Microscopy Images with Guided "
                "Conditional Flow Matching. arXiv:2506.22397",
                doi=bmz.Doi(PAPER_DOI),
            )
        ],
        license=bmz.LicenseId(license),
        tags=[
            "dehazing",
            "widefield",
            "confocal",
            "fluorescence-light-microscopy",
            "flow-matching",
            "uncertainty",
            "2d",
            "pytorch",
            "image-restoration",
        ],
        documentation=bmz.FileDescr(source=tmp / "README.md", sha256=sha256(tmp / "README.md")),
        covers=[bmz.FileDescr(source=tmp / "cover.png", sha256=sha256(tmp / "cover.png"))],
        attachments=[bmz.FileDescr(source=tmp / "training_config.json", sha256=sha256(tmp / "training_config.json"))],
        inputs=[
            bmz.InputTensorDescr(
                id=bmz.TensorId("widefield"),
                description="raw widefield image (float32; normalised inside the model)",
                axes=[
                    bmz.BatchAxis(id=bmz.AxisId("batch"), size=1),
                    bmz.ChannelAxis(id=bmz.AxisId("channel"), channel_names=[bmz.Identifier("widefield")]),
                    *space_in,
                ],
                test_tensor=bmz.FileDescr(source=tmp / "test_input.npy", sha256=sha256(tmp / "test_input.npy")),
                sample_tensor=bmz.FileDescr(source=tmp / "sample_input.tif", sha256=sha256(tmp / "sample_input.tif")),
                data=bmz.IntervalOrRatioDataDescr(type="float32"),
            )
        ],
        outputs=[
            bmz.OutputTensorDescr(
                id=bmz.TensorId("dehazed"),
                description="channel 'mean': MMSE dehazed image; channel 'std': per-pixel std over the samples"
                + (", calibrated: max(a*std+b, 0)" if calibrated else ""),  # at most 128 characters (spec)
                axes=[
                    bmz.BatchAxis(id=bmz.AxisId("batch"), size=1),
                    bmz.ChannelAxis(
                        id=bmz.AxisId("channel"), channel_names=[bmz.Identifier("mean"), bmz.Identifier("std")]
                    ),
                    *space_out,
                ],
                test_tensor=bmz.FileDescr(source=tmp / "test_output.npy", sha256=sha256(tmp / "test_output.npy")),
                sample_tensor=bmz.FileDescr(source=tmp / "sample_output.tif", sha256=sha256(tmp / "sample_output.tif")),
                data=bmz.IntervalOrRatioDataDescr(type="float32"),
            )
        ],
        weights=bmz.WeightsDescr(**weights),
        version="0.1.0",
        config=bmz.Config(bioimageio=bmz.BioimageioConfig(architecture_type="U-Net, guided flow matching")),
    )
