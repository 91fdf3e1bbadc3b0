"""Honest checks: `check`, `plan` and `train` agree on what data is usable and warn alike about data that
trains but means nothing; a run folder's files, which may come from anyone, are checked when read and a
bad one ends in one line (exit code 2) or is left out with a warning, never a traceback."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segwise import errors
from segwise.config import RunConfig
from segwise.data.check import check_data
from segwise.errors import SegwiseError

from .conftest import TINY, run_cli

TINY_FLAGS = ["--encoder", TINY["encoder"], "--batch-size", "2", "--epochs", "1", "--device", "cpu"]


def write_data(root: Path, masks: list[np.ndarray], classes: str | None = None) -> Path:
    """images/ + masks/ (no split folders), one random RGB image per mask; `classes`: classes.txt."""
    for kind in ("images", "masks"):
        (root / kind).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for index, mask in enumerate(masks):
        image = rng.integers(0, 255, (*mask.shape, 3), dtype=np.uint8)
        Image.fromarray(image).save(root / "images" / f"m{index}.png")
        Image.fromarray(mask.astype(np.uint8)).save(root / "masks" / f"m{index}.png")
    if classes is not None:
        (root / "classes.txt").write_text(classes)
    return root


def halves(count: int = 4, size: int = 32) -> list[np.ndarray]:
    mask = np.zeros((size, size), np.uint8)
    mask[:, size // 2 :] = 1
    return [mask] * count


def six_values(count: int = 4) -> list[np.ndarray]:
    """Masks holding the values 0..5 in stripes."""
    mask = np.zeros((32, 32), np.uint8)
    for value in range(6):
        mask[:, value * 5 : value * 5 + 5] = value
    return [mask] * count


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


def warnings_of(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("segwise: warning: ")]


# --- check and train agree -------------------------------------------------------------------------------


def test_a_one_image_dataset_is_refused_by_train_and_reported_by_check_in_the_same_words(tmp_path):
    data = write_data(tmp_path / "one", halves(1))
    message = "need at least 2 image/mask pairs to hold one out for validation"
    checked = run_cli("check", data)
    assert checked.returncode == 1 and message in checked.stdout, checked.stdout
    assert "no problems found" not in checked.stdout
    trained = run_cli("train", data, *TINY_FLAGS, "--runs-dir", tmp_path / "runs")
    assert trained.returncode == 2
    error = one_line(trained.stderr).removeprefix("segwise: error: ")
    # The very line check lists (path: message), from the one rule both apply.
    assert f"  [too few pairs] {error}" in checked.stdout.splitlines()
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_two_images_or_a_val_split_are_enough_for_both(tmp_path):
    two = check_data(write_data(tmp_path / "two", halves(2)))
    assert [p.kind for p in two.problems] == []
    split = tmp_path / "split"
    write_data(split / "train", halves(1))
    write_data(split / "val", halves(1))
    assert [p.kind for p in check_data(split).problems] == []


# --- no foreground anywhere --------------------------------------------------------------------------------


def test_check_warns_that_masks_without_foreground_make_metrics_meaningless(tmp_path):
    data = write_data(tmp_path / "zeros", [np.zeros((32, 32), np.uint8)] * 4)
    report = check_data(data)
    (warning,) = report.warnings
    assert "no foreground anywhere" in warning and "val mIoU 1.0 mean nothing" in warning
    assert str(data) in warning and "'background'" in warning
    assert f"warning: {warning}" in report.text().splitlines()
    assert check_data(write_data(tmp_path / "halves", halves())).warnings == []


def test_plan_and_train_warn_about_masks_without_foreground(tmp_path):
    data = write_data(tmp_path / "zeros", [np.zeros((32, 32), np.uint8)] * 4)
    planned = run_cli("plan", data, *TINY_FLAGS, "-o", tmp_path / "plan.yaml")
    assert planned.returncode == 0, planned.stderr
    (warning,) = warnings_of(planned.stderr)
    assert "no foreground anywhere" in warning and "mean nothing" in warning
    # with the plan as its config (nothing planned, no notes printed) training still says it
    trained = run_cli("train", data, "-c", tmp_path / "plan.yaml", "--runs-dir", tmp_path / "runs")
    assert trained.returncode == 0, trained.stderr
    assert warnings_of(trained.stderr) == [warning]
    (run,) = (tmp_path / "runs").iterdir()  # what training writes passes the checks of loading
    assert RunConfig.load(run / "config.yaml").classes.names == ["background", "foreground"]


def test_the_plan_warns_through_python_warnings_for_library_users(tmp_path):
    from segwise.engine.plan import make_plan

    data = write_data(tmp_path / "zeros", [np.zeros((32, 32), np.uint8)] * 4)
    with pytest.warns(errors.SegwiseWarning, match="no foreground anywhere"):
        make_plan(data, encoder=TINY["encoder"], batch_size=2, epochs=1, device="cpu")


# --- mask values that become classes ---------------------------------------------------------------------


def test_values_without_a_class_file_become_classes_with_a_warning_naming_them(tmp_path):
    data = write_data(tmp_path / "six", six_values())
    report = check_data(data)
    assert report.classes.names == [f"class_{v}" for v in range(6)] and report.problems == []
    (warning,) = report.warnings
    assert "no class-name file" in warning and "mask values 0..5 became 6 classes" in warning
    assert str(data / "classes.txt") in warning and "line i naming mask value i" in warning
    planned = run_cli("plan", data, *TINY_FLAGS, "-o", tmp_path / "plan.yaml")
    assert planned.returncode == 0 and warnings_of(planned.stderr) == [f"segwise: warning: {warning}"]


def test_binary_masks_and_named_classes_need_no_warning(tmp_path):
    assert check_data(write_data(tmp_path / "binary", halves())).warnings == []
    named = write_data(tmp_path / "named", six_values(), "a\nb\nc\nd\ne\nf\n")
    assert check_data(named).warnings == []


def test_values_beyond_the_class_file_are_one_problem_of_the_file_worded_as_train_refuses_them(tmp_path):
    data = write_data(tmp_path / "named", six_values(), "background\ncat\ndog\n")
    report = check_data(data)
    (problem,) = report.problems  # one line for the file, not one per mask
    assert problem.path == data / "classes.txt" and problem.kind == "unexpected values"
    assert (
        "names 3 classes (values 0..2) but 4 mask(s) (m0.png, m1.png, m2.png, …) hold value(s) [3, 4, 5]"
        in str(problem)
    )
    trained = run_cli("train", data, *TINY_FLAGS, "--runs-dir", tmp_path / "runs")
    assert trained.returncode == 2
    line = one_line(trained.stderr)
    assert f"{data / 'classes.txt'}: names 3 classes (values 0..2) but masks hold value(s) [3, 4, 5]" in line


@pytest.mark.parametrize(
    "names, problem",
    [("back\x00ground\ncat\n", "holds a control character"), ("cat\ncat\n", "'cat' is given twice")],
)
def test_a_class_file_with_a_name_no_run_could_load_is_refused_before_training(tmp_path, names, problem):
    data = write_data(tmp_path / "bad", halves(), names)
    for command in ("check", "train"):
        result = run_cli(command, data, *(TINY_FLAGS if command == "train" else []))
        assert result.returncode == 2, result.stdout
        line = one_line(result.stderr)
        assert line.startswith(f"segwise: error: {data / 'classes.txt'}: class name") and problem in line


# --- a run folder's config.yaml, checked on load ---------------------------------------------------------


def write_run(root: Path) -> Path:
    """A run folder as training writes it (binary, 32×32 input, a tiny untrained model)."""
    from segwise.config import PreprocessConfig, TrainConfig
    from segwise.models import create_model
    from segwise.run import save_weights
    from segwise.task import Classes

    run = root / "run"
    run.mkdir(parents=True)
    model = create_model("unet", TINY["encoder"], 2, 3, **TINY["options"])
    data = {"root": str(root / "data"), "plan": {"layout": "folders"}}
    preprocess = PreprocessConfig([32, 32], [0.5] * 3, [0.25] * 3)
    config = RunConfig(model.config, Classes(["background", "cell"], [0, 1]), preprocess, TrainConfig(), data)
    config.save(run / "config.yaml")
    save_weights(model, run / "model.safetensors")
    return run


def edit_config(run: Path, change) -> None:
    path = run / "config.yaml"
    values = yaml.safe_load(path.read_text())
    change(values)
    path.write_text(yaml.safe_dump(values, sort_keys=False))


BAD_CONFIGS = {
    "a NUL in a class name": (
        lambda c: c["classes"]["names"].__setitem__(1, "ce\x00ll"),
        "classes.names[1]: 'ce\\x00ll' holds the control character '\\x00'",
    ),
    "an escape code in the data root": (
        lambda c: c["data"].__setitem__("root", "/data/\x1b[2J"),
        "data.root: '/data/\\x1b[2J' holds the control character '\\x1b'",
    ),
    "a huge input size": (
        lambda c: c["preprocess"].__setitem__("input_size", [60000, 60000]),
        "preprocess.input_size: [60000, 60000] is not valid; expected [height, width], each ≥ 1 and ≤ 16384",
    ),
    "a negative input size": (
        lambda c: c["preprocess"].__setitem__("input_size", [-32, 32]),
        "preprocess.input_size: [-32, 32] is not valid",
    ),
    "an input size of text": (
        lambda c: c["preprocess"].__setitem__("input_size", ["32", 32]),
        "preprocess.input_size: ['32', 32] has the wrong type",
    ),
    "duplicate class names": (
        lambda c: c["classes"].__setitem__("names", ["cell", "cell"]),
        "classes.names: class name 'cell' is given twice",
    ),
    "a class name that is no string": (
        lambda c: c["classes"]["names"].__setitem__(1, 7),
        "classes.names: ['background', 7] has the wrong type",
    ),
    "more names than the head has outputs": (
        lambda c: c["classes"].update(names=["a", "b", "c"], values=[0, 1, 2], palette=[[0, 0, 0]] * 3),
        "model.num_classes: 2 is not valid; expected 3, one output per class of classes.names",
    ),
    "a stored value beyond 16 bits": (
        lambda c: c["classes"].__setitem__("values", [0, 70000]),
        "classes.values: [0, 70000] is not valid",
    ),
    "a std of zero": (
        lambda c: c["preprocess"].__setitem__("std", [0.25, 0.0, 0.25]),
        "preprocess.std: [0.25, 0.0, 0.25] is not valid",
    ),
    "a mean for one channel of three": (
        lambda c: c["preprocess"].update(mean=[0.5], std=[0.25]),
        "model.in_channels: 3 is not valid; expected 1",
    ),
    "a data plan that is no mapping": (
        lambda c: c["data"].__setitem__("plan", "folders"),
        "data.plan: expected a mapping of DataConfig fields, got str",
    ),
    "a key of another type": (
        lambda c: c.__setitem__(5, "x"),
        "unknown key(s) [5]",
    ),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_a_bad_run_config_is_one_error_naming_the_file_and_key(tmp_path, case):
    change, expected = BAD_CONFIGS[case]
    run = write_run(tmp_path)
    edit_config(run, change)
    with pytest.raises(SegwiseError) as raised:
        RunConfig.load(run / "config.yaml")
    message = str(raised.value)
    assert message.startswith(f"{run / 'config.yaml'}: ") and expected in message, message
    assert "\n" not in message and "\x00" not in message and "\x1b" not in message


@pytest.mark.parametrize("command", ["predict", "report", "export", "eval"])
def test_every_command_that_reads_a_run_refuses_a_huge_input_size_in_one_line(tmp_path, command):
    run = write_run(tmp_path)
    edit_config(run, BAD_CONFIGS["a huge input size"][0])
    data = write_data(tmp_path / "data", halves(2))
    arguments = {
        "predict": [data / "images" / "m0.png", "-o", tmp_path / "out"],
        "eval": [data, "--device", "cpu"],
    }.get(command, [])
    result = run_cli(command, run, *arguments)
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(f"segwise: error: {run / 'config.yaml'}: preprocess.input_size: [60000, 60000]")
    assert not (tmp_path / "out").exists() and not (run / "report.html").exists()


@pytest.mark.parametrize(
    "channels, expected",
    [
        ("wide", "unet: decoder_channels needs 5 entries"),
        ([32, 16, 16, 8, "x"], "model: unet does not build"),
    ],
)
def test_model_options_that_build_no_model_are_one_error_naming_the_config(tmp_path, channels, expected):
    run = write_run(tmp_path)
    edit_config(run, lambda c: c["model"]["options"].__setitem__("decoder_channels", channels))
    image = write_data(tmp_path / "data", halves(1)) / "images" / "m0.png"
    result = run_cli("predict", run, image, "-o", tmp_path / "out")
    assert result.returncode == 2
    line = one_line(result.stderr)
    assert line.startswith(f"segwise: error: {run / 'config.yaml'}: {expected}"), line


def test_plan_files_are_held_to_the_same_rules_and_aliases_are_read_once(tmp_path):
    from segwise.config import load_config

    plan = tmp_path / "plan.yaml"
    plan.write_text('model:\n  arch: "unet\\e[31m"\n')
    with pytest.raises(SegwiseError, match=r"plan\.yaml: model\.arch: 'unet\\x1b\[31m' holds the control"):
        load_config(plan)
    # 30 levels of nine aliases each: 9**29 strings if every appearance were walked
    levels = ['a0: &a0 ["x", "y"]'] + [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 9)}]" for i in range(1, 30)]
    plan.write_text("\n".join(levels) + "\n")
    with pytest.raises(SegwiseError, match=r"plan\.yaml: unknown key\(s\) \['a0', 'a1', "):
        load_config(plan)


def test_train_size_beyond_the_limit_is_refused_before_reading_data(tmp_path):
    result = run_cli("train", tmp_path / "absent", "--size", "60000", *TINY_FLAGS)
    assert result.returncode == 2
    assert "train.size: [60000, 60000] is not valid; expected [height, width], each ≥ 8 and ≤ 16384" in (
        one_line(result.stderr)
    )


# --- metrics.csv and metrics.json that segwise did not write ---------------------------------------------


@pytest.mark.parametrize(
    "text, why",
    [
        ("hello world\nthis is, not a table\n", "no column(s) epoch, train_loss"),
        ("epoch,train_loss,val_loss,val_miou,val_pixel_accuracy,lr\n1,0.5,0.5,x,0.9,0.01\n", "line 2"),
        ("epoch,train_loss,val_loss,val_miou,val_pixel_accuracy,lr\n1,0.5\n", "line 2"),
        ("\x00\xff\xfe binary", "not a metrics table"),
    ],
)
def test_report_leaves_out_a_metrics_csv_segwise_did_not_write_with_one_warning(tmp_path, text, why):
    run = write_run(tmp_path)
    (run / "metrics.csv").write_bytes(text.encode("latin-1"))
    result = run_cli("report", run)
    assert result.returncode == 0, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith(f"segwise: warning: {run / 'metrics.csv'}: not a metrics table written by segwise")
    assert why in line and line.endswith("training curves left out")
    assert "No readable metrics.csv" in (run / "report.html").read_text()


def test_eval_with_a_text_metrics_csv_evaluates_and_warns_once(tmp_path):
    run = write_run(tmp_path)
    (run / "metrics.csv").write_text("hello world\nthis is, not a table\n")
    data = write_data(tmp_path / "data", halves(2))
    result = run_cli("eval", run, data, "--split", "all", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert [line for line in result.stderr.splitlines() if "metrics.csv" in line] == [
        f"segwise: warning: {run / 'metrics.csv'}: not a metrics table written by segwise (no column(s) "
        "epoch, train_loss, val_loss, val_miou, val_pixel_accuracy, lr); training curves left out"
    ]
    assert (run / "eval" / "all" / "metrics.json").is_file() and (run / "report.html").is_file()


@pytest.mark.parametrize(
    "content, why",
    [
        ("not json at all", "not JSON"),
        (json.dumps({"overall": {"mean_iou": "high"}, "per_class": {}}), "no overall scores"),
        (json.dumps({"overall": {"mean_iou": 0.5}, "per_class": {"a": {"iou": [1]}}}), "no per-class scores"),
    ],
)
def test_compare_refuses_and_report_leaves_out_a_foreign_metrics_json(tmp_path, content, why):
    run = write_run(tmp_path)
    path = run / "eval" / "val" / "metrics.json"
    path.parent.mkdir(parents=True)
    path.write_text(content)
    compared = run_cli("compare", run, "-o", tmp_path / "compare.png")
    assert compared.returncode == 2 and not (tmp_path / "compare.png").exists()
    line = one_line(compared.stderr)
    assert line.startswith(f"segwise: error: {path}: not an evaluation written by segwise: {why}"), line
    reported = run_cli("report", run)
    assert reported.returncode == 0
    (warning,) = warnings_of(reported.stderr)
    assert warning.startswith(f"segwise: warning: {path}: not an evaluation") and "left out" in warning
