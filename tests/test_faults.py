"""Faults: a resume on changed data, processes killed mid-write, a full disk, and kills at random points.

The signals are real. SIGKILL goes to a child `segwise train` (DYING) and SIGINT/SIGTERM to `segwise`
run in this process, each just before the process renames its Nth finished last.pt into place (its
`os.replace`, how `atomic_path` ends a write): the worst moment for debris. The slow test kills a
child at random points instead, ten times in a row.
"""

from __future__ import annotations

import csv
import errno
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from segwise.data import fingerprint
from segwise.errors import SegwiseError
from segwise.io import is_temporary

from .conftest import TINY, run_cli, write_pair

TIMING = ("seconds", "images_per_s")

# `segwise train` in a child process that sends itself DIE_BY just before it renames the DIE_AT-th
# finished temporary of the file DIE_IN into place.
DYING = """
import os, signal, sys
from segwise.cli import main
replace, count = os.replace, [0]
def dying_replace(source, target, *args, **kwargs):
    if os.path.basename(target) == os.environ["DIE_IN"]:
        count[0] += 1
        if count[0] == int(os.environ["DIE_AT"]):
            os.kill(os.getpid(), getattr(signal, os.environ["DIE_BY"]))
    return replace(source, target, *args, **kwargs)
os.replace = dying_replace
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Bit-for-bit reproducibility across processes: deterministic kernels and one thread each."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


def _plan(tmp_path: Path) -> Path:
    path = tmp_path / "plan.yaml"
    path.write_text(yaml.safe_dump({"model": {"encoder": TINY["encoder"], "options": TINY["options"]}}))
    return path


def _train_args(data: Path, runs: Path, plan: Path, epochs: int) -> list[str]:
    return [
        *("train", str(data), "-c", str(plan), "--runs-dir", str(runs), "--name", "run"),
        *("--epochs", str(epochs), "--batch-size", "4", "--precision", "fp32", "--deterministic"),
        *("--ema-decay", "0.9", "--seed", "3", "-q"),
    ]


def _history(run_dir: Path, columns: tuple[str, ...] | None = None) -> list[dict]:
    """metrics.csv without its timings (or only the `columns` given)."""
    with open(run_dir / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    if columns is not None:
        return [{k: row[k] for k in columns} for row in rows]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def _temporaries(folder: Path) -> list[Path]:
    return [path for path in folder.rglob("*") if is_temporary(path)]


def _dying_train(args: list[str], die_in: str, die_at: int, die_by: str) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "DIE_IN": die_in,
        "DIE_AT": str(die_at),
        "DIE_BY": die_by,
        "PYTHONWARNINGS": "ignore",
    }
    return subprocess.run(
        [sys.executable, "-c", DYING, *args], capture_output=True, text=True, env=env, timeout=600
    )


def _dead_pid() -> int:
    """The id of a process that has just ended (a writer that is gone)."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ---- finding 3: a resume notices changed data ------------------------------------------------------


def _held_out_data(root: Path, count: int) -> Path:
    """images/ + masks/ without a val/ folder: the run holds a fifth out, so removing pairs reshuffles."""
    for index in range(count):
        write_pair(root, f"pair{index:02d}", size=(32, 32), mask_values=(0, 1))
    return root


def _signalled_in_process(args: list[str], monkeypatch, signum: int) -> subprocess.CompletedProcess:
    """`segwise ARGS` in this process, sent `signum` just before it puts its second last.pt in place
    (epoch 1's checkpoint is there, epoch 2's is written but not yet renamed)."""
    replace, count = os.replace, [0]

    def signalling_replace(source, target, *rest, **options):
        if os.path.basename(target) == "last.pt":
            count[0] += 1
            if count[0] == 2:
                os.kill(os.getpid(), signum)
        return replace(source, target, *rest, **options)

    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", signalling_replace)
        return run_cli(*args)


def test_resume_on_changed_data_stops_and_says_what_changed(tmp_path, monkeypatch):
    data = _held_out_data(tmp_path / "data", 24)
    runs = tmp_path / "runs"
    stopped = _signalled_in_process(
        _train_args(data, runs, _plan(tmp_path), epochs=3), monkeypatch, signal.SIGINT
    )
    assert stopped.returncode == 130, stopped.stderr
    run_dir = runs / "run"
    unchanged = {name: (run_dir / name).read_bytes() for name in ("config.yaml", "last.pt", "metrics.csv")}

    for index in range(8):  # eight pairs deleted, five masks edited, as in the report
        (data / "images" / f"pair{index:02d}.png").unlink()
        (data / "masks" / f"pair{index:02d}.png").unlink()
    for index in range(8, 13):
        path = data / "masks" / f"pair{index:02d}.png"
        Image.fromarray(1 - np.asarray(Image.open(path))).save(path)

    refused = run_cli("train", "--resume", run_dir)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1
    assert "data changed since the run started" in refused.stderr
    assert "5 masks changed (masks/pair08.png, masks/pair09.png, …)" in refused.stderr
    assert "removed" in refused.stderr and "--allow-changed-data" in refused.stderr
    assert {name: (run_dir / name).read_bytes() for name in unchanged} == unchanged
    recorded = json.loads((run_dir / "data.json").read_text())  # as the run started: 19 + 5
    assert len(recorded["splits"]["train"]) == 19 and len(recorded["splits"]["val"]) == 5

    allowed = run_cli("train", "--resume", run_dir, "--allow-changed-data")
    assert allowed.returncode == 0, allowed.stderr
    assert [int(row["epoch"]) for row in _history(run_dir)] == [1, 2, 3]  # trained on, on the new data
    record = json.loads((run_dir / "data.json").read_text())
    assert len(record["splits"]["train"]) + len(record["splits"]["val"]) == 16
    (entry,) = record["history"]
    assert (
        entry["after_epoch"] == 1
        and "5 masks changed (masks/pair08.png, masks/pair09.png, …)" in entry["changes"]
    )
    config = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert config["data"]["train_images"] == len(record["splits"]["train"])
    assert config["data"]["val_images"] == len(record["splits"]["val"])
    held_out = (run_dir / "val.txt").read_text().split()
    assert held_out == [image for image, _ in record["splits"]["val"]]

    again = run_cli("train", "--resume", run_dir)  # the record now describes the data as it is
    assert again.returncode == 0, again.stderr


def _record(train: list[str], val: list[str], files: dict) -> dict:
    pairs = {
        split: [[f"images/{s}.png", f"masks/{s}.png"] for s in stems]
        for split, stems in (("train", train), ("val", val))
    }
    return {"format": 1, "root": "/data", "splits": pairs, "files": files, "history": []}


def test_changes_name_pairs_removed_added_moved_and_files_changed():
    files = {f"{kind}/{s}.png": [10, 1] for kind in ("images", "masks") for s in "abcdef"}
    before = _record(["a", "b", "c", "d"], ["e"], {**files, "classes.txt": [5, 1]})
    after = _record(["a", "e", "f"], ["b"], {**files, "masks/a.png": [11, 2], "images/f.png": [10, 2]})
    assert fingerprint.changes(before, after) == [
        "2 training pairs removed",
        "1 training pair added",
        "1 pair moved from training to validation",
        "1 pair moved from validation to training",
        "1 image changed (images/f.png)",
        "1 mask changed (masks/a.png)",
        "1 other file changed (classes.txt removed)",
    ]
    assert fingerprint.changes(before, before) == []


def test_an_unreadable_data_record_is_one_line(tmp_path):
    path = tmp_path / "data.json"
    for text in ("not json", json.dumps({"format": 1, "splits": {"train": [["a"]]}, "files": {}})):
        path.write_text(text)
        with pytest.raises(
            SegwiseError, match=r"data\.json: not a segwise data record .*--allow-changed-data"
        ):
            fingerprint.read(path)


# ---- finding 5: no debris after a crash -----------------------------------------------------------


def test_debris_of_a_process_killed_mid_write_is_swept_by_the_resume(shapes_data, tmp_path):
    args = _train_args(shapes_data, tmp_path / "runs", _plan(tmp_path), epochs=2)
    killed = _dying_train(args, "last.pt", die_at=2, die_by="SIGKILL")
    assert killed.returncode == -signal.SIGKILL
    run_dir = tmp_path / "runs" / "run"
    assert [path.name.split(".")[1:3] for path in _temporaries(run_dir)] == [["last", "pt"]]  # the finding

    resumed = run_cli("train", "--resume", run_dir, "-q")
    assert resumed.returncode == 0, resumed.stderr
    assert _temporaries(run_dir) == []


def test_sigterm_mid_write_removes_the_temporary_and_exits_143(shapes_data, tmp_path, monkeypatch):
    args = _train_args(shapes_data, tmp_path / "runs", _plan(tmp_path), epochs=2)
    stopped = _signalled_in_process(args, monkeypatch, signal.SIGTERM)
    assert stopped.returncode == 128 + signal.SIGTERM
    assert stopped.stderr.strip().splitlines()[-1] == "segwise: interrupted by SIGTERM"
    assert "Traceback" not in stopped.stderr
    run_dir = tmp_path / "runs" / "run"
    assert _temporaries(run_dir) == []
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1  # the old one, whole


def test_commands_sweep_dead_writers_temporaries_from_the_run_folder(trained_run, tmp_path):
    import segwise

    run_dir = shutil.copytree(trained_run, tmp_path / "run")
    dead = run_dir / f".model.safetensors.{_dead_pid()}-x1.tmp.safetensors"
    live = run_dir / f".last.pt.{os.getpid()}-x2.tmp.pt"
    for path in (dead, live):
        path.write_bytes(b"partial")
    segwise.load(run_dir, device="cpu")
    assert not dead.exists() and live.exists()  # only a writer that is gone leaves debris


def test_the_command_line_puts_the_signal_handlers_back():
    before = {signum: signal.getsignal(signum) for signum in (signal.SIGINT, signal.SIGTERM)}
    assert run_cli("train").returncode == 2  # a command that ends at once, here in this process
    assert {signum: signal.getsignal(signum) for signum in before} == before


# ---- finding 6: a full disk -----------------------------------------------------------------------


def test_a_full_disk_while_training_is_one_line_and_keeps_the_old_checkpoint(
    shapes_data, tmp_path, monkeypatch
):
    save = torch.save

    def filling_save(obj, handle, *rest, **options):  # some of epoch 2's checkpoint fits, then no more
        if obj.get("epoch") == 2:
            with open(handle, "wb") if isinstance(handle, (str, os.PathLike)) else handle as file:
                file.write(bytes(1000))
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return save(obj, handle, *rest, **options)

    monkeypatch.setattr(torch, "save", filling_save)
    full = run_cli(*_train_args(shapes_data, tmp_path / "runs", _plan(tmp_path), epochs=2))
    assert full.returncode == 2 and "Traceback" not in full.stderr
    (line,) = full.stderr.strip().splitlines()
    run_dir = tmp_path / "runs" / "run"
    assert f"{run_dir / 'last.pt'}: out of disk space (" in line and " free; the file needs about " in line
    assert "the previous last.pt is intact" in line
    assert torch.load(run_dir / "last.pt", weights_only=True)["epoch"] == 1
    assert _temporaries(run_dir) == []


REAL_DISK = """
import json, sys, torch
from pathlib import Path
from segwise.engine.checkpoint import TrainingState
from segwise.errors import SegwiseError
from segwise.run import save_weights
folder = Path(sys.argv[1])
model = torch.nn.Linear(512, 512)  # 1 MB of weights
save_weights(model, folder / "model.safetensors")
TrainingState(model=model.state_dict()).save(folder)
kept = {name: (folder / name).read_bytes() for name in ("model.safetensors", "last.pt")}
with open(folder / "filler", "wb") as handle:  # fill the disk to the last byte
    try:
        while True:
            handle.write(bytes(65536))
            handle.flush()
    except OSError:
        pass
messages = []
for write in (lambda: save_weights(torch.nn.Linear(512, 512), folder / "model.safetensors"),
              lambda: TrainingState(model=torch.nn.Linear(512, 512).state_dict()).save(folder)):
    try:
        write()
        messages.append(None)
    except SegwiseError as error:
        messages.append(str(error))
intact = all((folder / name).read_bytes() == data for name, data in kept.items())
left = sorted(p.name for p in folder.iterdir())
print(json.dumps({"messages": messages, "intact": intact, "left": left}))
"""


def _user_namespaces() -> bool:
    if shutil.which("unshare") is None or shutil.which("mount") is None:
        return False
    probe = subprocess.run(["unshare", "-r", "-m", "true"], capture_output=True)
    return probe.returncode == 0


@pytest.mark.skipif(
    not _user_namespaces(), reason="needs `unshare -r -m` to mount a small tmpfs unprivileged"
)
def test_a_really_full_disk_keeps_the_old_weights_and_checkpoint(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    script = tmp_path / "fill.py"
    script.write_text(REAL_DISK)
    shell = f"mount -t tmpfs -o size=4m tmpfs {mount} && exec {sys.executable} {script} {mount}"
    result = subprocess.run(
        ["unshare", "-r", "-m", "sh", "-c", shell], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout.strip().splitlines()[-1])
    weights, checkpoint = report["messages"]
    assert weights.startswith(f"{mount / 'model.safetensors'}: out of disk space (0 bytes free")
    assert checkpoint.startswith(f"{mount / 'last.pt'}: out of disk space (0 bytes free")
    assert "the previous model.safetensors is intact" in weights
    assert report["intact"] and report["left"] == ["filler", "last.pt", "model.safetensors"]


# ---- all of it: killed at random points, resumed each time ----------------------------------------

KILLS = 10


@pytest.mark.slow
def test_killed_at_random_points_and_resumed_ends_like_an_uninterrupted_run(shapes_data, tmp_path):
    """SIGKILL or SIGTERM at a random point of training, ten times in a row, resuming each time (a run
    killed before its first checkpoint starts again); the run ends with the uninterrupted run's history
    and no temporary file anywhere in its folder."""
    plan, epochs = _plan(tmp_path), 14
    straight = run_cli(*_train_args(shapes_data, tmp_path / "straight", plan, epochs))
    assert straight.returncode == 0, straight.stderr
    # A kill falls half an epoch to an epoch and a half (this machine's own pace) after the child says
    # it starts training: ten kills spread along the run, each at most an epoch further, never past its end.
    epoch = float(np.mean([float(row["seconds"]) for row in _history(tmp_path / "straight" / "run", TIMING)]))
    rng, run_dir, kills = random.Random(20), tmp_path / "killed" / "run", 0
    start = _train_args(shapes_data, tmp_path / "killed", plan, epochs)
    while kills < KILLS:
        with open(tmp_path / "stderr.txt", "w") as log:
            command = [sys.executable, "-m", "segwise", *_continue(run_dir, start)[:-1]]  # not quiet
            child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=log, text=True)
            for line in child.stdout:
                if line.startswith(("segwise: training", "segwise: resuming")):
                    break
            time.sleep(rng.uniform(0.5, 1.5) * epoch)
            if child.poll() is None:
                child.send_signal(rng.choice([signal.SIGKILL, signal.SIGTERM]))
                kills += 1
            child.communicate()
        stopped = (0, -signal.SIGKILL, -signal.SIGTERM, 128 + signal.SIGTERM)
        assert child.returncode in stopped, (tmp_path / "stderr.txt").read_text()
        assert not _finished(run_dir, epochs)
    finished = run_cli(*_continue(run_dir, start))
    assert finished.returncode == 0, finished.stderr
    assert _history(run_dir) == _history(tmp_path / "straight" / "run")
    assert _temporaries(run_dir) == []


def _continue(run_dir: Path, start: list[str]) -> list[str]:
    """What a user runs after a kill: resume, or start again when no epoch had ended; quiet (-q) last."""
    if (run_dir / "last.pt").is_file():
        return ["train", "--resume", str(run_dir), "-q"]
    shutil.rmtree(run_dir, ignore_errors=True)
    return start


def _finished(run_dir: Path, epochs: int) -> bool:
    return (run_dir / "last.pt").is_file() and torch.load(run_dir / "last.pt", weights_only=True)[
        "epoch"
    ] == epochs
