"""Training checkpoints: safetensors weights + JSON, never pickle.

A training checkpoint (``run/checkpoints/step_000500/``) holds G, D, G_ema, both optimizers' state
and ``state.json`` (step, config, loss history): enough to resume exactly. The inference artifact
(``run/model/``) is `gen_engine.models.artifact`'s.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file


def optimizer_to_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Split an optimizer state_dict into flat tensors (safetensors) and JSON (param groups)."""
    sd = opt.state_dict()
    tensors = {f"{idx}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().clone().contiguous()
               for idx, st in sd["state"].items() for k, v in st.items()}
    return tensors, {"param_groups": sd["param_groups"]}


def optimizer_from_tensors(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for key, v in tensors.items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = v
    groups = meta["param_groups"]
    for g in groups:
        g["betas"] = tuple(g["betas"]) if "betas" in g else g.get("betas")
    opt.load_state_dict({"state": state, "param_groups": groups})
    # Files hold NCHW; lay each moment estimate out as its parameter is (channels-last in training), as an
    # uninterrupted run has it: no layout conversion on every later step, the same memory order as before.
    for group in opt.param_groups:
        for p in group["params"]:
            st = opt.state.get(p, {})
            for k, v in st.items():
                if torch.is_tensor(v) and v.shape == p.shape and v.stride() != p.stride():
                    st[k] = torch.empty_like(p).copy_(v)


def save_checkpoint(path: Path, modules: dict[str, torch.nn.Module], optims: dict[str, torch.optim.Optimizer],
                    state: dict[str, Any]) -> Path:
    """Write a checkpoint folder atomically: into a temporary sibling, renamed into place when complete,
    so a process killed mid-save (or a second trainer of the same run) never leaves a half-written
    ``step_*`` that `latest_checkpoint` would pick and fail to resume from."""
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
    tmp.mkdir(parents=True)
    try:
        for name, m in modules.items():
            save_file({k: v.detach().contiguous() for k, v in m.state_dict().items()}, tmp / f"{name}.safetensors")
        opt_meta = {}
        for name, opt in optims.items():
            tensors, meta = optimizer_to_tensors(opt)
            save_file(tensors, tmp / f"opt_{name}.safetensors")
            opt_meta[name] = meta
        (tmp / "state.json").write_text(json.dumps({**state, "optimizers": opt_meta}, indent=1))
        if path.exists():  # the same step saved again (a resumed run): the new one replaces it
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def load_checkpoint(path: Path, modules: dict[str, torch.nn.Module],
                    optims: dict[str, torch.optim.Optimizer]) -> dict[str, Any]:
    state = json.loads((path / "state.json").read_text())
    for name, m in modules.items():
        m.load_state_dict(load_file(path / f"{name}.safetensors"))
    for name, opt in optims.items():
        optimizer_from_tensors(opt, load_file(path / f"opt_{name}.safetensors"), state["optimizers"][name])
    return state


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (temporary folders of an interrupted save are not checkpoints)."""
    found = sorted(p for p in (run_dir / "checkpoints").glob("step_*") if (p / "state.json").exists())
    return found[-1] if found else None
