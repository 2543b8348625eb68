"""Training checkpoints that a kill or a full disk cannot tear or mix: train.py's DIR/last, written whole or not at all.

    save(model, processor, opt, OUT/"last", config, step)   # the model, processor, config and optimizer state
    latest(OUT/"last")  -> the newest complete checkpoint (OUT/last, else OUT/last.prev), or None
    trim_log(OUT/"log.jsonl", step)   # on resume: the log forgets the steps after the checkpoint
    start(OUT, settings, resume, overwrite)   # before training: OUT holds checkpoints of this run only

A save writes everything into LAST.tmp, then renames the old LAST to LAST.prev, LAST.tmp to LAST, and only then
deletes LAST.prev: at every instant one complete checkpoint is on disk. A checkpoint is complete when its weights,
config and optimizer state load and name the same step (train_config.json's steps_done = trainer_state.pt's step).
OUT/settings.json holds the settings of the run whose checkpoints OUT holds, so a resume cannot mix two runs.
"""
import json
import shutil
from pathlib import Path

import torch

from common import data
from common.model import save as save_model

STATE, SETTINGS = "trainer_state.pt", "settings.json"


def save(model, processor, opt, folder, config, step):
    """Write a checkpoint of `step` to `folder` so that the previous one stays until this one is complete."""
    folder = Path(folder)
    tmp, prev = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".prev")
    shutil.rmtree(tmp, ignore_errors=True)  # a save cut off before: never read, replaced
    try:
        save_model(model, processor, tmp, {**config, "steps_done": step})
        torch.save({"opt": opt.state_dict(), "step": step}, tmp / STATE)
    except OSError as e:  # a full disk: say what is still safe
        shutil.rmtree(tmp, ignore_errors=True)
        kept = latest(folder, quiet=True)
        raise OSError(f"could not write the checkpoint of step {step} to {tmp} ({e}); the last complete checkpoint "
                      f"is {kept or 'none'}") from e
    if folder.exists():
        shutil.rmtree(prev, ignore_errors=True)
        folder.rename(prev)
    tmp.rename(folder)
    shutil.rmtree(prev, ignore_errors=True)


def check(folder):
    """-> the step of a complete checkpoint in `folder`; raises ValueError saying what is missing or torn."""
    folder = Path(folder)
    for name in ("config.json", "train_config.json", STATE):
        if not (folder / name).exists():
            raise ValueError(f"{folder}: {name} is missing")
    try:
        step = torch.load(folder / STATE, map_location="cpu", weights_only=False)["step"]
        done = json.loads((folder / "train_config.json").read_text())["steps_done"]
        from safetensors import safe_open
        for f in folder.glob("*.safetensors"):
            with safe_open(f, "pt") as w:  # every tensor read: a torn file fails here, not mid-training
                for k in w.keys():
                    w.get_tensor(k)
        if not any(folder.glob("*.safetensors")):
            raise ValueError("no weights (*.safetensors)")
    except Exception as e:  # noqa: BLE001 (any torn file: pickle, JSON, safetensors errors alike)
        raise ValueError(f"{folder}: torn or unreadable ({type(e).__name__}: {e})") from None
    if step != done:
        raise ValueError(f"{folder}: the weights are of step {done} but the optimizer state of step {step}")
    return step


def latest(folder, quiet=False):
    """The newest complete checkpoint: `folder`, else the previous one a cut-off save left (saying so), else None."""
    folder = Path(folder)
    found = [f for f in (folder, folder.with_name(folder.name + ".prev")) if f.exists()]
    for f in found:
        try:
            check(f)
        except ValueError as e:
            if not quiet:
                print(f"[checkpoint] skipping {e}")
            continue
        if f != folder and not quiet:
            print(f"[checkpoint] resuming from the previous complete checkpoint {f}")
        return f
    return None


def trim_log(path, step):
    """Drop the log lines of steps after `step` (a resumed run does them again: no step is logged twice)."""
    path, keep = Path(path), []
    if not path.exists():
        return
    for line in path.read_text().splitlines(keepends=True):
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except ValueError:  # a line cut off by the kill
            pass
    path.write_text("".join(keep))


def start(out, settings, resume, overwrite=False):
    """Before a run writes into the folder `out`: --resume continues only the run whose settings OUT/settings.json
    holds (an error names each difference); a fresh run into a folder holding a checkpoint is refused unless
    `overwrite`, which removes it (and its log) first. Then OUT/settings.json holds `settings`."""
    out = Path(out)
    sf, found = out / SETTINGS, [p for p in (out / "last", out / "last.prev") if p.exists()]
    if found and resume:
        if not sf.exists():
            raise ValueError(f"{sf} is missing: cannot tell which settings made the checkpoint in {out}; use "
                             "another --out, or --overwrite to start over")
        data.same_settings(sf, settings, out)
    elif found and not overwrite:
        raise ValueError(f"{out} holds a checkpoint ({', '.join(p.name for p in found)}): pass --resume to continue "
                         "its run, --overwrite to start over, or use another --out")
    elif found:
        for p in found + [out / "last.tmp"]:
            shutil.rmtree(p, ignore_errors=True)
        (out / "log.jsonl").unlink(missing_ok=True)
        print(f"[checkpoint] --overwrite: removed {', '.join(p.name for p in found)} and the log from {out}")
    out.mkdir(parents=True, exist_ok=True)
    sf.write_text(json.dumps(settings, indent=1))
