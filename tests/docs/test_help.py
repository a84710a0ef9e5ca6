"""Every flag a user can type is described in --help, with its default shown once."""

import argparse

import pytest

from hazematching.cli import build_parser
from hazematching.training.args import build_parser as build_train_parser


def _parsers():
    """(name, parser) for the command, each subcommand and the trainer."""
    top = build_parser()
    yield "hazematching", top
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield f"hazematching {name}", sub
    yield "trainer/train.py", build_train_parser("Train HazeMatching")


PARSERS = list(_parsers())


@pytest.mark.parametrize("name,parser", PARSERS, ids=[name for name, _ in PARSERS])
def test_every_flag_has_help_and_one_default(name, parser):
    formatter = parser._get_formatter()
    missing, doubled, none_shown = [], [], []
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS or "-h" in action.option_strings:
            continue
        if not (action.help or "").strip():
            missing.append(action.option_strings[-1])
            continue
        text = formatter._expand_help(action)
        if text.count("default") > 1:
            doubled.append(f"{action.option_strings[-1]}: {text}")
        if "default: None" in text:
            none_shown.append(action.option_strings[-1])
    assert not missing, f"{name}: flags without help: {missing}"
    assert not doubled, f"{name}: defaults stated twice: {doubled}"
    assert not none_shown, f"{name}: '(default: None)' tells a user nothing: {none_shown}"


def test_subcommands_are_described_without_markup():
    for name, parser in PARSERS:
        assert parser.description, f"{name} has no description"
        assert "``" not in parser.format_help(), f"{name}: raw reST markup in --help"


def test_the_walk_sees_every_subcommand_and_the_model_flags():
    """The test above must not pass by seeing nothing."""
    names = [name for name, _ in PARSERS]
    assert {"hazematching predict", "hazematching export", "hazematching calibrate"} <= set(names)
    trainer = dict(PARSERS)["trainer/train.py"]
    flags = {flag for action in trainer._actions for flag in action.option_strings}
    assert {"--lr", "--seed", "--augment", "--base-channels", "--sampler-steps"} <= flags
