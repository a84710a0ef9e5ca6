"""Every flag of ``hazematching`` and of the trainer has a typed field behind it (a hand-written
``add_argument`` fails here), and each subcommand's parsed flags validate into its typed model."""

import argparse
import inspect
from types import SimpleNamespace

import pytest

from hazematching import cli, commands
from hazematching.architecture import KINDS
from hazematching.config import SamplerConfig, TrainConfig
from hazematching.settings import InferenceSettings, SettingError, SettingsRequest, SpeedOptions, resolve_settings
from hazematching.training.args import build_parser as build_train_parser

UNTYPED = {"help", "debug"}  # argparse's --help and the error policy's --debug (cli._add_debug_flag)
TRAINER_UNTYPED = {"help", "config"}  # --config: a file of the typed fields, not a field


def subparsers(parser: argparse.ArgumentParser, words: str = ""):
    """(words after ``hazematching``, parser) of every (sub)command that runs something."""
    nested = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not nested:
        yield words, parser
    for action in nested:
        for name, sub in action.choices.items():
            yield from subparsers(sub, f"{words} {name}".strip())


def full_parser() -> argparse.ArgumentParser:
    return cli.build_parser()  # as main() uses it, --debug included


def untyped_flags(parser: argparse.ArgumentParser, fields: set[str], exempt: set[str]) -> list[str]:
    return [
        "/".join(action.option_strings) or action.dest
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction) and action.dest not in exempt | fields
    ]


def trainer_fields() -> set[str]:
    network = {f"model.{name}" for kind in KINDS.values() for name in kind.model_fields}
    return set(TrainConfig.model_fields) | network | {f"sampler.{name}" for name in SamplerConfig.model_fields}


def test_every_subcommand_has_a_typed_model_and_every_flag_a_field():
    walked = dict(subparsers(full_parser()))
    assert set(walked) == set(commands.COMMANDS), "a subcommand without a typed model in commands.COMMANDS"
    for words, parser in walked.items():
        fields = set(commands.flat_fields(commands.COMMANDS[words]))
        assert not untyped_flags(parser, fields, UNTYPED), f"hazematching {words}: flags without a typed field"
        dests = {action.dest for action in parser._actions}
        assert fields <= dests, f"hazematching {words}: typed fields without a flag: {fields - dests}"


def test_every_trainer_flag_has_a_typed_field():
    parser = build_train_parser("Train HazeMatching")
    assert not untyped_flags(parser, trainer_fields(), TRAINER_UNTYPED)


def test_a_hand_written_flag_is_found():
    """The walk above can fail: a flag added by hand to a subcommand or the trainer has no field."""
    walked = dict(subparsers(full_parser()))
    for words in ("predict", "reference import"):
        parser = walked[words]
        parser.add_argument("--hand-written", type=int, default=None, help="no field behind it")
        assert untyped_flags(parser, set(commands.flat_fields(commands.COMMANDS[words])), UNTYPED) == ["--hand-written"]
    trainer = build_train_parser("Train HazeMatching")
    trainer.add_argument("--hand-written", default=None, help="no field behind it")
    assert untyped_flags(trainer, trainer_fields(), TRAINER_UNTYPED) == ["--hand-written"]


VALID = {
    "simulate": ["simulate", "--out", "o"],
    "predict": ["predict", "--model", "m", "--input", "i", "--output", "o", "--steps", "4", "--compile", "off"],
    "evaluate": ["evaluate", "--model", "m", "--data", "d", "--samples", "2", "--device", "cpu"],
    "calibrate": ["calibrate", "--model", "m", "--data", "d", "--bins", "5"],
    "tune": ["tune", "--model", "m", "--data", "d", "--samples", "2,4", "--dry-run"],
    "export": ["export", "--model", "m", "--output", "o.zip", "--authors", "A", "B", "--seed", "3"],
    "reference list": ["reference", "list"],
    "reference import": ["reference", "import", "x.pth", "--output", "o", "--input-mean", "1.5"],
    "reference download": ["reference", "download", "--dataset", "neuron", "--quiet"],
}


@pytest.mark.parametrize("words", list(commands.COMMANDS))
def test_parsed_flags_validate_into_the_model(words):
    args = full_parser().parse_args(VALID[words])
    options = commands.options_of(args)
    assert isinstance(options, commands.COMMANDS[words])
    flat = {}
    for name, value in options:  # the model holds exactly what the handlers read from the namespace
        flat.update(dict(value) if isinstance(value, (SettingsRequest, SpeedOptions)) else {name: value})
    assert flat == {name: getattr(args, name) for name in commands.flat_fields(type(options))}


def test_the_typed_values():
    args = full_parser().parse_args(VALID["predict"])
    options = commands.options_of(args)
    assert options.settings == SettingsRequest(steps=4)
    assert options.speed == SpeedOptions(compile="off")
    assert commands.options_of(full_parser().parse_args(VALID["export"])).authors == ["A", "B"]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["predict", "--model", "m", "--input", "i", "--output", "o", "--steps", "0"], "--steps 0"),
        (["export", "--model", "m", "--output", "o.zip", "--seed", "-1"], "--seed -1"),
        (["calibrate", "--model", "m", "--data", "d", "--overlap", "-2", "--tile-size", "8"], "--tile-size 8"),
    ],
)
def test_an_invalid_value_is_refused_before_the_handler_runs(argv, fragment, capsys, monkeypatch):
    """Exit 2 with one line from the typed model, without loading the (here absent) run."""
    called = []
    for name in ("_predict", "_export", "_calibrate"):
        monkeypatch.setattr(cli, name, lambda args: called.append(args))
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    assert stop.value.code == 2 and not called
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and fragment in err and "Traceback" not in err


def test_the_request_resolves_as_the_keyword_wrapper():
    run = SimpleNamespace(objective="cfm", sampler=SamplerConfig(), recommended_sampler=None)
    request = SettingsRequest(samples=3, solver="heun", tile_size=64)
    resolved = request.resolve(run)
    assert resolved == resolve_settings(run, samples=3, solver="heun", tile_size=64)
    assert isinstance(resolved, InferenceSettings) and resolved.steps == SamplerConfig().steps
    with pytest.raises(SettingError, match="--samples 0"):
        resolve_settings(run, samples=0)
    with pytest.raises(SettingError, match="unknown solver"):
        resolve_settings(run, solver="rk4")


def test_export_defaults_agree_with_the_package_writer():
    """export/package.py takes its defaults from commands.py (declared once); they must not drift apart."""
    package = pytest.importorskip("hazematching.export.package")
    assert commands.EXPORT_FORMATS == package.FORMATS
    assert commands.TEST_SIZE == package.TEST_SIZE
    assert (commands.DEFAULT_LICENSE, commands.PAPER_WEIGHTS_LICENSE) == (
        package.DEFAULT_LICENSE,
        package.PAPER_WEIGHTS_LICENSE,
    )
    assert inspect.signature(package.export_model).parameters["name"].default == commands.EXPORT_NAME


def test_old_flag_spellings_still_work_with_a_warning(capsys):
    """--batch-size / --sample-batch (tiles and samples per network call) were renamed; one release
    keeps them, saying so, and they set the same field."""
    parser = cli.build_parser()
    base = ["predict", "--model", "m", "--input", "i", "--output", "o"]
    old = parser.parse_args([*base, "--batch-size", "3", "--sample-batch", "2"])
    err = capsys.readouterr().err
    assert "--batch-size is deprecated: use --tiles-per-call" in err and "--sample-batch is deprecated" in err
    new = parser.parse_args([*base, "--tiles-per-call", "3", "--samples-per-call", "2"])
    assert capsys.readouterr().err == ""
    assert (old.tiles_per_call, old.samples_per_call) == (new.tiles_per_call, new.samples_per_call) == (3, 2)
    assert commands.options_of(old) == commands.options_of(new)
