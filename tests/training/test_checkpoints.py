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


def test_missing_process_files_names_each_rank_and_zero_shard(tmp_path):
    """What the main process checks before it publishes: every rank's RNG state and, for a DeepSpeed
    engine folder, every rank's ZeRO optimizer shard."""
    folder = tmp_path / ".tmp-checkpoint-2"
    engine = folder / "pytorch_model"
    engine.mkdir(parents=True)
    (folder / "random_states_0.pkl").write_bytes(b"")
    (engine / "mp_rank_00_model_states.pt").write_bytes(b"")
    (engine / "bf16_zero_pp_rank_0_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert checkpoints.missing_process_files(folder, 1) == []
    assert checkpoints.missing_process_files(folder, 2) == [
        "random_states_1.pkl",
        "pytorch_model/*zero_pp_rank_1_mp_rank_00_optim_states.pt",
    ]
    (folder / "random_states_1.pkl").write_bytes(b"")
    (engine / "bf16_zero_pp_rank_1_mp_rank_00_optim_states.pt").write_bytes(b"")
    assert checkpoints.missing_process_files(folder, 2) == []


def test_publishing_a_step_again_replaces_it_whole(tmp_path):
    """A resumed run writes the same step again: the new folder replaces the old one, no mix of both."""
    old = make(tmp_path, 10)
    (old / "stale.bin").write_bytes(b"old")
    tmp = checkpoints.temporary_dir(tmp_path, 10)
    tmp.mkdir()
    (tmp / checkpoints.COMPLETE_MARKER).write_text(json.dumps({"step": 10}))
    final = checkpoints.publish(tmp, 10)
    assert sorted(p.name for p in final.iterdir()) == [checkpoints.COMPLETE_MARKER]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-10"]


def test_zero3_checkpoints_need_every_rank_weight_shard(tmp_path):
    engine = tmp_path / "pytorch_model"
    engine.mkdir()
    (tmp_path / "random_states_0.pkl").write_bytes(b"")
    for rank in (0, 1):
        (engine / f"bf16_zero_pp_rank_{rank}_mp_rank_00_optim_states.pt").write_bytes(b"")
    (engine / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"")
    (tmp_path / "random_states_1.pkl").write_bytes(b"")
    assert checkpoints.missing_process_files(tmp_path, 2) == ["pytorch_model/zero_pp_rank_1_mp_rank_00_model_states.pt"]


def test_a_step_set_aside_during_republication_is_still_found(tmp_path):
    """Killed between setting the old checkpoint-10 aside and renaming the new one into place: ``latest``
    still finds step 10 (the set-aside copy) and cleaning keeps it until step 10 exists again."""
    make(tmp_path, 5)
    aside = make(tmp_path, 10).rename(tmp_path / ".tmp-replaced-checkpoint-10")
    (tmp_path / ".tmp-checkpoint-10").mkdir()  # the new one, unfinished
    assert checkpoints.latest_checkpoint(tmp_path) == aside
    checkpoints.clean_temporary(tmp_path)
    assert aside.is_dir() and not (tmp_path / ".tmp-checkpoint-10").exists()
    make(tmp_path, 10)
    assert checkpoints.latest_checkpoint(tmp_path).name == "checkpoint-10"
    checkpoints.clean_temporary(tmp_path)
    assert not aside.exists()
