"""One error policy for every subcommand: an invalid value exits 2, any other expected error 1, each
with one line naming the cause and no traceback; an unexpected error says how to get the traceback
(--debug), which --debug then shows."""

import argparse
from pathlib import Path

import pytest
import torch

from hazematching import cli


def outcome(argv, capsys) -> tuple[int, str]:
    """(exit status, everything the command said on stderr) of an in-process run."""
    with pytest.raises(SystemExit) as stop:
        cli.main(argv)
    code = stop.value.code
    err = capsys.readouterr().err
    return (code, err) if isinstance(code, int) else (1, err + str(code))


def assert_one_line(text: str, *fragments: str) -> None:
    lines = [line for line in text.splitlines() if line.strip().startswith("error:")]
    assert len(lines) == 1, text
    assert "Traceback" not in text
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def bad_values(run, data, tmp_path) -> dict:
    """A bad value for every subcommand that takes a run (and the others)."""
    out = str(tmp_path / "out")
    return {
        "predict": (["predict", "--model", run, "--input", run, "--output", out, "--steps", "0"], 2, "--steps 0"),
        "evaluate": (["evaluate", "--model", run, "--data", data, "--samples", "0"], 2, "--samples 0"),
        "calibrate": (["calibrate", "--model", run, "--data", data, "--tile-size", "3"], 2, "--tile-size 3"),
        "tune": (["tune", "--model", run, "--data", data, "--samples", "1"], 2, "--samples 1:"),
        "export": (["export", "--model", run, "--output", out + ".zip", "--formats", "onnx"], 2, "--formats onnx"),
        "simulate": (["simulate", "--out", out, "--num-images", "1"], 1, "--num-images"),
        "reference import": (["reference", "import", str(tmp_path / "no.pth"), "--output", out], 1, "no.pth"),
        "reference download": (
            ["reference", "download", "--dataset", "neuron", "--cache", out, "--quiet"],
            1,
            "neuron",
        ),
    }


def test_every_subcommand_has_a_bad_value_case():
    parser = cli.build_parser()
    commands = set()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                nested = [a for a in sub._actions if isinstance(a, argparse._SubParsersAction)]
                commands |= {f"{name} {n}" for a in nested for n in a.choices if n != "list"} if nested else {name}
    assert commands == set(bad_values("RUN", "DATA", Path("/tmp")))


@pytest.mark.parametrize(
    "command",
    ["predict", "evaluate", "calibrate", "tune", "export", "simulate", "reference import", "reference download"],
)
def test_a_bad_value_is_one_line_and_an_exit_status(command, trained_run, sim_data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HAZEMATCHING_RELEASE_URL", "http://127.0.0.1:9/")  # nothing listens: refused at once
    argv, status, fragment = bad_values(str(trained_run), str(sim_data / "val"), tmp_path)[command]
    code, err = outcome(argv, capsys)
    assert code == status
    assert_one_line(err, fragment)
    assert not (tmp_path / "out.zip").exists()
    assert not [p for p in (tmp_path / "out").rglob("*") if p.is_file()]  # (a download cache may have its folders)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_no_gpu_is_one_line(trained_run, tmp_path, capsys):
    argv = ["predict", "--model", str(trained_run), "--input", str(trained_run), "--output", str(tmp_path / "o")]
    code, err = outcome([*argv, "--device", "cuda"], capsys)
    assert code == 1
    assert_one_line(err, "--device cuda", "no CUDA GPU")


def test_an_unexpected_error_points_to_debug_which_shows_the_traceback(monkeypatch, capsys):
    def broken(args):
        raise TypeError("a bug")

    monkeypatch.setattr(cli, "_reference_list", broken)
    code, err = outcome(["reference", "list"], capsys)
    assert code == 1
    assert_one_line(err, "unexpected TypeError: a bug", "--debug")
    for argv in (["reference", "list", "--debug"], ["--debug", "reference", "list"]):  # either place
        with pytest.raises(TypeError, match="a bug"):
            cli.main(argv)


def test_a_warning_during_a_progress_bar_gets_a_line_of_its_own(capsys):
    """The CLI's warnings (a calibration mismatch, an input range) often come while a progress bar is
    drawn; written plainly they would be glued to the bar's line and easy to miss."""
    import sys

    from tqdm.auto import tqdm

    bar = tqdm(total=3, desc="dehazing", file=sys.stderr)
    bar.update(1)
    # what the default showwarning writes with the CLI's formatwarning (pytest records warnings instead)
    sys.stderr.write(cli._one_line_warning("the std calibration was fitted with K = 4", UserWarning, "f.py", 1))
    bar.close()
    shown = [line.split("\r")[-1] for line in capsys.readouterr().err.split("\n")]
    assert "warning: the std calibration was fitted with K = 4" in shown
    assert cli._one_line_warning("no bar", UserWarning, "f.py", 1) == "warning: no bar\n"  # no blank line
