"""The resume folder's bookkeeping, without a training: which state a job may continue, and the
order in which a save becomes the one a retry loads."""

import json
from pathlib import Path

import pytest

from vlmswap.train.loop import ResumeWorldMismatch, _save_state, _set_aside_foreign_state

RECORD = {"kind": "model", "cell": "c", "spec": {"recipe": {"lr": 2e-5}}, "fingerprint": "abc"}


def _state(tmp_path, world, latest=True):
    state = tmp_path / "resume" / "c"
    (state / "step-0000500").mkdir(parents=True)
    (state / "provenance.json").write_text(json.dumps({**RECORD, "world_size": world}))
    if latest:
        (state / "latest").write_text("step-0000500")
    return state


def test_state_of_this_run_saved_by_another_number_of_ranks_is_refused_and_kept(tmp_path):
    state = _state(tmp_path, world=4)
    with pytest.raises(ResumeWorldMismatch) as e:
        _set_aside_foreign_state(state, dict(RECORD), world=8, rank=0, say=print)
    message = str(e.value)
    assert str(state) in message and "step-0000500" in message and "4 ranks" in message and "has 8" in message
    assert "4 GPUs again" in message and "move the folder away" in message
    assert (state / "latest").is_file() and not list(state.parent.glob("c.stale-*"))


def test_the_same_number_of_ranks_resumes_and_a_record_from_before_world_sizes_were_kept_too(tmp_path):
    state = _state(tmp_path, world=4)
    _set_aside_foreign_state(state, dict(RECORD), world=4, rank=0, say=pytest.fail)
    (state / "provenance.json").write_text(json.dumps(RECORD))  # from before records named the world size
    _set_aside_foreign_state(state, dict(RECORD), world=8, rank=0, say=pytest.fail)
    assert (state / "latest").is_file()


def test_a_record_without_state_yet_is_moved_aside_rather_than_kept_with_the_old_size(tmp_path):
    state = _state(tmp_path, world=4, latest=False)
    said = []
    _set_aside_foreign_state(state, dict(RECORD), world=8, rank=0, say=said.append)
    assert not state.exists() and len(list(state.parent.glob("c.stale-*"))) == 1
    assert "world_size" in said[0]


def test_another_recipe_is_moved_aside_whatever_its_world_size(tmp_path):
    state = _state(tmp_path, world=4)
    said = []
    _set_aside_foreign_state(state, {**RECORD, "spec": {"recipe": {"lr": 1e-3}}}, world=8, rank=0, say=said.append)
    assert not state.exists() and "spec.recipe.lr" in said[0]


class _Engine:
    """Stands in for DeepSpeed's engine: records what `latest` said while the save was written."""
    global_rank = 0
    optimizer = None

    def __init__(self):
        self.seen = []

    def save_checkpoint(self, save_dir, tag, client_state, save_latest=True):
        assert save_latest is False  # DeepSpeed's rank 0 would write it before the other ranks finish
        latest = Path(save_dir) / "latest"
        self.seen.append(latest.read_text() if latest.exists() else None)
        (Path(save_dir) / tag).mkdir()
        (Path(save_dir) / tag / "zero_pp_rank_0_mp_rank_00_model_states.pt").write_bytes(b"state")


def test_latest_names_a_save_only_once_it_is_written_and_the_save_before_goes_after(tmp_path, monkeypatch):
    monkeypatch.setattr("vlmswap.train.loop.optimizer_kind", lambda engine: "AdamW")
    state, engine = tmp_path / "state", _Engine()
    _save_state(engine, state, 500, [], dict(RECORD), world=4)
    _save_state(engine, state, 1000, [], dict(RECORD), world=4)
    assert engine.seen == [None, "step-0000500"]  # while 1000 was written, latest still named 500
    assert (state / "latest").read_text() == "step-0001000"
    assert sorted(p.name for p in state.glob("step-*")) == ["step-0001000"]
    assert json.loads((state / "provenance.json").read_text())["world_size"] == 4
