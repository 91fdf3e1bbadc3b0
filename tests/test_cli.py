"""The command line as a user meets it: subprocesses, exit codes, one-line errors."""

import numpy as np
import pytest
import yaml
from PIL import Image

from .conftest import TINY, run_cli, write_pair


def assert_one_line_error(result, *fragments):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0]


@pytest.fixture(scope="module")
def cli_run(shapes_data, tmp_path_factory):
    runs = tmp_path_factory.mktemp("cli_runs")
    plan = runs / "plan.yaml"
    plan.write_text(
        yaml.safe_dump(
            {
                "model": {"encoder": TINY["encoder"], "options": TINY["options"]},
                "train": {"batch_size": TINY["batch_size"]},
            }
        )
    )
    result = run_cli(
        "train",
        str(shapes_data),
        "-c",
        str(plan),
        "--epochs",
        "1",
        "--runs-dir",
        str(runs),
        "--name",
        "cli",
        "-q",
    )
    assert result.returncode == 0, result.stderr
    assert "run folder:" in result.stdout
    return runs / "cli"


def test_predict_writes_palette_masks_at_each_input_size(cli_run, tmp_path):
    Image.fromarray(np.zeros((250, 333, 3), np.uint8)).save(tmp_path / "odd.jpg")
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "gray.png")
    result = run_cli(
        "predict",
        str(cli_run),
        str(tmp_path / "odd.jpg"),
        str(tmp_path / "gray.png"),
        "-o",
        str(tmp_path / "out"),
    )
    assert result.returncode == 0, result.stderr
    odd = Image.open(tmp_path / "out" / "odd.png")
    assert odd.size == (333, 250) and odd.mode == "P"
    assert Image.open(tmp_path / "out" / "gray.png").size == (64, 64)


def test_predict_accepts_folders_and_globs(cli_run, shapes_data, tmp_path):
    result = run_cli(
        "predict",
        str(cli_run),
        str(shapes_data / "test" / "images"),
        str(shapes_data / "val" / "images" / "val_000[0-1].png"),
        "-o",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "test_0000.png",
        "test_0001.png",
        "val_0000.png",
        "val_0001.png",
    ]


def test_missing_data_folder(tmp_path):
    assert_one_line_error(run_cli("train", str(tmp_path / "nowhere")), "nowhere", "not found")


def test_image_without_mask(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "lonely")
    (tmp_path / "masks" / "lonely.png").unlink()
    assert_one_line_error(
        run_cli("train", str(tmp_path), "--runs-dir", str(tmp_path / "runs")), "lonely.png", "no mask"
    )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


def test_mask_size_differs_from_image(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    Image.new("L", (12, 9)).save(tmp_path / "masks" / "b.png")
    assert_one_line_error(run_cli("train", str(tmp_path)), "b.png", "12×9", "50×40")


def test_unreadable_image(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    (tmp_path / "images" / "b.png").write_text("garbage")
    assert_one_line_error(run_cli("train", str(tmp_path)), "b.png", "cannot read image")


def test_bad_config_key(tmp_path, shapes_data):
    (tmp_path / "plan.yaml").write_text("train:\n  epoch: 3\n")
    assert_one_line_error(
        run_cli("train", str(shapes_data), "-c", str(tmp_path / "plan.yaml")),
        "plan.yaml",
        "unknown key(s) ['epoch']",
        "epochs",
    )


def test_predict_with_missing_run_or_input(cli_run, tmp_path):
    assert_one_line_error(
        run_cli("predict", str(tmp_path / "norun"), "x.png", "-o", str(tmp_path)),
        "norun",
        "run folder not found",
    )
    assert_one_line_error(
        run_cli("predict", str(cli_run), str(tmp_path / "x.png"), "-o", str(tmp_path)),
        "x.png",
        "input not found",
    )


def test_predict_on_unreadable_image(cli_run, tmp_path):
    (tmp_path / "bad.png").write_text("nope")
    assert_one_line_error(
        run_cli("predict", str(cli_run), str(tmp_path / "bad.png"), "-o", str(tmp_path / "o")),
        "bad.png",
        "cannot read image",
    )


def test_help_has_an_example_for_every_command():
    for command in ("train", "predict", "demo", "eval", "report", "compare", "list-models"):
        result = run_cli(command, "--help")
        assert result.returncode == 0 and "example:" in result.stdout


@pytest.mark.slow
def test_demo_runs_end_to_end(tmp_path):
    result = run_cli("demo", "--out", str(tmp_path / "demo"), "--epochs", "1", "-q")
    assert result.returncode == 0, result.stderr
    assert "validation mIoU" in result.stdout
    assert len(list((tmp_path / "demo" / "predictions").glob("*.png"))) == 8
    assert (tmp_path / "demo" / "runs" / "shapes" / "model.safetensors").is_file()
