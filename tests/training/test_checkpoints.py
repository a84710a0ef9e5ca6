import json

import pytest

from hazematching.training import checkpoints


def make(dirpath, step, complete=True):
    path = dirpath / f"checkpoint-{step}"
    path.mkdir(parents=True)
    if complete:
        (path / checkpoints.COMPLETE_MARKER).write_text(json.dumps({"step": step}))
    return path


def test_latest_ignores_partial_and_temporary(tmp_path):
    make(tmp_path, 5)
    make(tmp_path, 20)
    make(tmp_path, 100)  # numeric, not lexicographic order
    make(tmp_path, 300, complete=False)
    (tmp_path / ".tmp-checkpoint-400").mkdir()
    assert checkpoints.latest_checkpoint(tmp_path).name == "checkpoint-100"
    assert checkpoints.resolve_resume("latest", tmp_path).name == "checkpoint-100"
    assert checkpoints.resolve_resume(None, tmp_path) is None
    assert checkpoints.resolve_resume("latest", tmp_path / "none") is None
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        checkpoints.resolve_resume(str(tmp_path / "checkpoint-300"), tmp_path)


def test_publish_and_rotate(tmp_path):
    for step in (10, 20, 30):
        tmp = checkpoints.temporary_dir(tmp_path, step)
        tmp.mkdir()
        (tmp / checkpoints.COMPLETE_MARKER).write_text("{}")
        checkpoints.publish(tmp, step)
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path)] == [
        "checkpoint-10",
        "checkpoint-20",
        "checkpoint-30",
    ]
    removed = checkpoints.rotate(tmp_path, 2)
    assert [p.name for p in removed] == ["checkpoint-10"]
    assert [p.name for p in checkpoints.list_checkpoints(tmp_path)] == ["checkpoint-20", "checkpoint-30"]
    (tmp_path / ".tmp-checkpoint-40").mkdir()
    checkpoints.clean_temporary(tmp_path)
    assert not (tmp_path / ".tmp-checkpoint-40").exists()
