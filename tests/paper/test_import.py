"""``hazematching reference import``: bad input is refused with one line and writes nothing; good files
become runs whose network reproduces the saved one."""

import json
from pathlib import Path

import pytest
import torch
from conftest import perturb

import hazematching.paper.importer as importer
from hazematching.cli import main as cli_main
from hazematching.core.reference_unet import ReferenceUNet
from hazematching.core.unet import UNet
from hazematching.paper.releases import get
from hazematching.run import load_model

STATS = ["--input-mean", "100", "--input-std", "5", "--target-mean", "50", "--target-std", "20"]


class WritesMarker:
    """A pickle whose unpickling would run code (``Path.write_text``): ``weights_only`` must refuse it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (Path(self.marker), "code ran"))


def small_network(seed: int = 0) -> ReferenceUNet:
    """The paper's network at its smallest (two levels, attention at ds = 2): fast to save and import."""
    torch.manual_seed(seed)
    return perturb(ReferenceUNet(channel_mults=(1, 2), attention_resolutions=(2,)).eval(), seed)


@pytest.fixture(scope="module")
def small_file(tmp_path_factory) -> tuple[ReferenceUNet, Path]:
    net = small_network()
    path = tmp_path_factory.mktemp("small") / "small.pth"
    torch.save(net.state_dict(), path)
    return net, path


def import_run(checkpoint: Path, output: Path, *flags: str) -> None:
    cli_main(["reference", "import", str(checkpoint), "--output", str(output), *flags])


def refused(checkpoint: Path, output: Path, *flags: str) -> str:
    """The import exits with one ``error: ...`` line, and ``output`` was not created."""
    with pytest.raises(SystemExit) as exc:
        import_run(checkpoint, output, *flags)
    message = exc.value.code
    assert isinstance(message, str) and message.startswith("error: "), message
    assert "\n" not in message, message
    assert not output.exists()
    return message


def recognise_as(monkeypatch, path: Path, name: str) -> None:
    """Make ``path`` one of the released files (the real ones are not available offline)."""
    digest = importer.sha256_of(path)
    real = importer.by_sha256
    monkeypatch.setattr(importer, "by_sha256", lambda d, kind="checkpoint": get(name) if d == digest else real(d, kind))


# bad input: one line naming the file and the problem, nothing written


def test_a_state_dict_of_another_network_is_refused(tmp_path):
    path = tmp_path / "ours.pth"
    torch.save(UNet(channel_mults=(1, 2)).state_dict(), path)
    message = refused(path, tmp_path / "run", "--dataset", "neuron")
    assert str(path) in message and "does not fit the paper's network" in message
    assert "missing (time_embed.0.weight" in message and "unexpected (time_mlp.0.weight" in message
    message = refused(path, tmp_path / "run", *STATS)  # no data set: the layout cannot even be read
    assert str(path) in message and "not a checkpoint of the paper's network" in message


@pytest.mark.parametrize(
    "damage, words",
    [
        (lambda s: s.pop("out.2.weight"), "cannot be read off its keys (no out.2.weight)"),
        (lambda s: s.pop("input_blocks.1.0.out_layers.3.weight"), "unexpected layout at input_blocks.1"),
        (lambda s: [s.pop(k) for k in list(s) if k.startswith("input_blocks.") and k[13] != "0"], "no residual blocks"),
        (lambda s: s.update({"input_blocks.0.0.weight": torch.zeros(3)}), "cannot be read off its keys"),
        (lambda s: s.update({"middle_block.1.qkv.weight": torch.zeros(3)}), "1 wrong shape (middle_block.1.qkv"),
        (lambda s: s.update({"extra.weight": torch.zeros(3)}), "1 unexpected (extra.weight)"),
    ],
    ids=["no-output-conv", "no-residual-block", "stem-only", "1d-input-conv", "wrong-shape", "extra-key"],
)
def test_a_damaged_state_dict_is_refused(small_file, tmp_path, damage, words):
    """Once a traceback (KeyError, UnboundLocalError, IndexError) when the layout was read off the keys."""
    state = dict(small_file[0].state_dict())
    damage(state)
    path = tmp_path / "damaged.pth"
    torch.save(state, path)
    message = refused(path, tmp_path / "run", *STATS)
    assert str(path) in message and words in message


def test_a_truncated_file_is_refused(neuron_like, tmp_path):
    data = neuron_like[1].read_bytes()
    path = tmp_path / "truncated.pth"
    path.write_bytes(data[: len(data) // 2])
    message = refused(path, tmp_path / "run", "--dataset", "neuron")
    assert str(path) in message and "damaged or truncated" in message


def test_an_empty_file_is_refused(tmp_path):
    path = tmp_path / "empty.pth"
    path.write_bytes(b"")
    assert "the file is empty" in refused(path, tmp_path / "run", "--dataset", "neuron")


def test_a_pickle_that_is_not_a_state_dict_is_refused(tmp_path):
    path = tmp_path / "numbers.pth"
    torch.save([1, 2, 3], path)
    message = refused(path, tmp_path / "run", "--dataset", "neuron")
    assert str(path) in message and "holds a list, not a state dict" in message


def test_a_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pth"
    torch.save(WritesMarker(marker), path)
    message = refused(path, tmp_path / "run", "--dataset", "neuron")
    assert str(path) in message and "holds pickled Python objects" in message and "\x1b" not in message
    assert not marker.exists()
    torch.load(path, weights_only=False)  # the file is live: a plain unpickling does run its code
    assert marker.read_text() == "code ran"


def test_a_wrong_dataset_for_a_released_file_is_refused(small_file, tmp_path, monkeypatch):
    recognise_as(monkeypatch, small_file[1], "organoids1")
    message = refused(small_file[1], tmp_path / "run", "--dataset", "neuron")
    assert str(small_file[1]) in message
    assert "released organoids1 checkpoint" in message and "not --dataset neuron" in message


def test_an_unknown_file_needs_a_dataset_or_statistics(small_file, tmp_path):
    message = refused(small_file[1], tmp_path / "run")
    assert str(small_file[1]) in message and "not one of the released checkpoints" in message
    assert "--dataset" in message and "--input-mean" in message


def test_zebrafish_needs_its_source_channel(tmp_path):
    path = tmp_path / "zebrafish.pth"
    torch.save(ReferenceUNet().state_dict(), path)  # the P = 128 layout of the four P = 128 releases
    message = refused(path, tmp_path / "run", "--dataset", "zebrafish")
    assert str(path) in message and "--source-channel ch0 | ch1 | ch2" in message
    import_run(path, tmp_path / "run", "--dataset", "zebrafish", "--source-channel", "ch1")
    stats = json.loads((tmp_path / "run" / "config.json").read_text())["normalization"]
    assert stats["input_mean"] == get("zebrafish").normalisation["ch1"].input_mean


def test_a_source_channel_for_another_dataset_is_refused(neuron_like, tmp_path):
    message = refused(neuron_like[1], tmp_path / "run", "--dataset", "neuron", "--source-channel", "ch0")
    assert str(neuron_like[1]) in message and "zebrafish only" in message


def test_partial_statistics_are_refused(small_file, tmp_path):
    message = refused(small_file[1], tmp_path / "run", "--input-mean", "100", "--input-std", "5")
    assert "give all four of --input-mean, --input-std, --target-mean and --target-std" in message
    message = refused(small_file[1], tmp_path / "run", *STATS[:-1], "0")
    assert "must be positive" in message


def test_a_non_empty_output_is_refused(small_file, tmp_path):
    output = tmp_path / "run"
    output.mkdir()
    (output / "notes.txt").write_text("mine")
    with pytest.raises(SystemExit) as exc:
        import_run(small_file[1], output, *STATS)
    assert str(output) in exc.value.code and "exists and is not empty" in exc.value.code
    assert [p.name for p in output.iterdir()] == ["notes.txt"] and (output / "notes.txt").read_text() == "mine"


# good input


def test_a_released_file_gets_its_release(neuron_like, tmp_path, monkeypatch, capsys):
    recognise_as(monkeypatch, neuron_like[1], "neuron")
    import_run(neuron_like[1], tmp_path / "run")
    assert "imported the released neuron checkpoint" in capsys.readouterr().out
    run = load_model(tmp_path / "run")
    release = get("neuron")
    stats = release.normalisation["all"]
    assert run.config.imported.verified is True and run.config.imported.release == "neuron"
    assert run.config.imported.url == release.checkpoint_url
    assert (run.normalization.input_mean, run.normalization.input_std) == (stats.input_mean, stats.input_std)
    assert (run.normalization.target_mean, run.normalization.target_std) == (stats.target_mean, stats.target_std)
    assert (run.config.sampler.tile_size, run.config.sampler.overlap) == (64, 16)
    assert (run.config.sampler.solver, run.config.sampler.steps) == ("euler", 19)
    import_run(neuron_like[1], tmp_path / "again", "--dataset", "neuron")  # naming it rightly is fine
    assert load_model(tmp_path / "again").config.imported.verified is True


def test_an_unknown_file_with_a_dataset_gets_its_statistics_unverified(neuron_run):
    run = load_model(neuron_run)
    stats = get("neuron").normalisation["all"]
    assert run.config.imported.verified is False and run.config.imported.release == "neuron"
    assert run.config.imported.url is None
    assert (run.normalization.input_mean, run.normalization.target_std) == (stats.input_mean, stats.target_std)
    architecture = run.config.architecture
    assert architecture.kind == "reference"
    assert architecture.channel_mults == (1, 2, 3, 4) and architecture.attention_resolutions == (4,)
    assert (run.config.sampler.tile_size, run.config.sampler.overlap, run.config.sampler.steps) == (64, 16, 19)


@pytest.mark.parametrize("prefix", ["", "module."], ids=["plain", "ddp"])
def test_an_unknown_file_with_statistics_reproduces_the_saved_network(tmp_path, prefix):
    net = small_network(seed=3)
    path = tmp_path / "mine.pth"
    torch.save({prefix + key: value for key, value in net.state_dict().items()}, path)
    import_run(path, tmp_path / "run", *STATS)
    run = load_model(tmp_path / "run")
    assert run.config.imported.release is None and run.config.imported.verified is False
    assert run.config.architecture.channel_mults == (1, 2) and run.config.architecture.attention_resolutions == (2,)
    assert run.config.sampler.tile_size == 32  # 16 tokens per side at the attention's factor
    assert (run.normalization.input_mean, run.normalization.target_std) == (100.0, 20.0)
    x, cond = torch.randn(2, 2, 1, 32, 32)
    t = torch.tensor([0.2, 0.7])
    with torch.no_grad():
        expected = net(x, cond, t)
        assert expected.abs().max() > 0.1
        assert torch.equal(run.model(x, cond, t), expected)
