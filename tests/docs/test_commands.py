"""No page of the guide (nor the README) shows a command that does not work with today's flags:
every command line is parsed by the parser that will run it."""

import functools
import re
import subprocess
import sys
from pathlib import Path

import pytest
from guide import PAGES, REPO, commands

from hazematching.cli import build_parser
from hazematching.training.args import parse_train_config

# Commands of the environment around us, checked only for being one of these.
OTHER_TOOLS = {
    "pip",
    "python3 -m venv",
    "python -m pytest",
    ".",
    "source",
    "cd",
    "git",
    "tensorboard",
    "mkdocs",
    "napari",
}


def _parse_cli(argv: list[str]) -> None:
    build_parser().parse_args(argv)


def _parse_trainer(argv: list[str]) -> None:
    parse_train_config(argv)  # flags and their validation (combinations, ranges)


def _parse_accelerate(argv: list[str]) -> None:
    from accelerate.commands.launch import launch_command_parser

    launch = launch_command_parser().parse_args(argv)
    config = launch.config_file
    if config is not None and config.startswith("accelerate_configs/"):
        assert (REPO / config).is_file(), f"--config_file {config} does not exist"
    script, rest = launch.training_script, launch.training_script_args
    if launch.module:
        {"hazematching.training": _parse_trainer, "hazematching": _parse_cli}[script](rest)
    else:
        assert script == "trainer/train.py", f"accelerate launch of {script}"
        _parse_trainer(rest)


@functools.cache
def _script_help(path: Path) -> str:
    done = subprocess.run([sys.executable, str(path), "--help"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert done.returncode == 0, f"{path.name} --help failed: {done.stderr[-500:]}"
    return done.stdout


def _parse_script(argv: list[str]) -> None:
    path = REPO / argv[0]
    assert path.is_file(), f"{argv[0]} does not exist"
    if path.suffix == ".sh":  # scripts/slurm_train.sh DATA OUTPUT [trainer flags]
        _parse_trainer(["--data", argv[1], "--output-dir", argv[2], *argv[3:]])
        return
    flags = set(re.findall(r"--[a-z][a-z0-9-]*", _script_help(path)))
    for flag in (a.split("=")[0] for a in argv[1:] if a.startswith("--")):
        assert flag in flags, f"{argv[0]} has no flag {flag} (see its --help)"


def check(argv: list[str]) -> None:
    """Parses one command of the guide, or fails naming what is wrong."""
    words = " ".join(argv[:3])
    if argv[0] == "hazematching":
        _parse_cli(argv[1:])
    elif argv[:3] in (["python", "-m", "hazematching"], ["python3", "-m", "hazematching"]):
        _parse_cli(argv[3:])
    elif argv[:2] == ["accelerate", "launch"]:
        _parse_accelerate(argv[2:])
    elif argv[0] in ("python", "python3") and argv[1].endswith("trainer/train.py"):
        _parse_trainer(argv[2:])
    elif argv[0] in ("python", "python3") and argv[1].startswith("scripts/"):
        _parse_script(argv[1:])
    elif argv[0] == "sbatch":
        _parse_script(argv[1:])
    elif argv[:2] == ["xvfb-run", "-a"]:
        check(argv[2:])
    elif argv[0] == "bioimageio":
        assert argv[1] in ("test", "predict", "validate"), f"bioimageio {argv[1]}"
    elif not any(words.startswith(tool) for tool in OTHER_TOOLS):
        raise AssertionError(f"a command the docs test does not know: {' '.join(argv)}")


CASES = [(page, argv) for page in PAGES for argv in commands(page)]


@pytest.mark.parametrize("page,argv", CASES, ids=[f"{p.relative_to(REPO)}:{' '.join(a)[:60]}" for p, a in CASES])
def test_command_parses(page, argv):
    try:
        check(argv)
    except SystemExit as exc:  # argparse's way of saying no (or, with code 0, of showing --help)
        if exc.code in (0, None):
            return
        pytest.fail(f"{page.relative_to(REPO)}: `{' '.join(argv)}` does not parse (exit {exc.code})")


def test_the_guide_has_commands_and_the_check_can_fail():
    assert len(CASES) > 30
    for wrong in (
        ["hazematching", "predict", "--model", "r", "--input", "i", "--output", "o", "--K", "8"],
        ["accelerate", "launch", "trainer/train.py", "--data", "d", "--output-dir", "o", "--learning-rate", "1"],
        ["accelerate", "launch", "trainer/train.py", "--data", "d", "--output-dir", "o", "--crop-size", "30"],
        ["python", "scripts/gpu_check.py", "logs", "--no-such-flag"],
        ["hazematic", "predict"],
    ):
        with pytest.raises((SystemExit, AssertionError)):
            check(wrong)


def test_readme_demo_is_the_quickstart():
    """The README's one-line demo runs exactly the Quickstart's steps."""
    readme = commands(REPO / "README.md")
    quickstart = commands(REPO / "docs" / "quickstart.md")
    demo = readme[: readme.index(["bioimageio", "test", "demo/model.zip"]) + 1]
    assert demo == quickstart, "README demo and docs/quickstart.md differ"
    assert re.search(r"hazematching simulate", (REPO / "README.md").read_text())
