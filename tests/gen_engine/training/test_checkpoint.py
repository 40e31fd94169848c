"""Checkpoints are written atomically: a save that dies half-way leaves the previous one to resume from."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gen_engine.training import checkpoint as ck


def test_a_save_killed_half_way_leaves_no_checkpoint_to_resume_from(tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters())
    net(torch.ones(1, 3)).sum().backward()
    opt.step()
    first = ck.save_checkpoint(tmp_path / "checkpoints" / "step_0000001", {"g": net}, {"g": opt}, {"step": 1})
    real, calls = ck.save_file, {"n": 0}

    def dies_on_the_second_file(*a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("No space left on device")  # or SIGKILL: the folder is left half-written
        return real(*a, **k)

    monkeypatch.setattr(ck, "save_file", dies_on_the_second_file)
    with pytest.raises(OSError):
        ck.save_checkpoint(tmp_path / "checkpoints" / "step_0000002", {"g": net}, {"g": opt}, {"step": 2})
    monkeypatch.undo()
    assert ck.latest_checkpoint(tmp_path) == first
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step_0000001"]
    (tmp_path / "checkpoints" / "step_0000003").mkdir()  # a folder left by an older, non-atomic save
    assert ck.latest_checkpoint(tmp_path) == first
    assert ck.load_checkpoint(first, {"g": torch.nn.Linear(3, 2)}, {})["step"] == 1
