"""The command line as a user meets it: exit codes, one-line errors, and the few things only a real
process shows (imports at start-up, the console script, an interrupt)."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from segwise.cli import main
from segwise.errors import SegwiseError

from .conftest import TINY, run_cli, run_cli_subprocess, write_pair


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


# ---- in a real process: what starting one is about ----------------------------------------------

LIGHT_START = """
import sys, segwise, segwise.cli
segwise.cli.build_parser()
try:
    segwise.cli.main(["--help"])
except SystemExit as exit:
    assert exit.code == 0, exit.code
print(sorted(m for m in ("torch", "timm", "matplotlib") if m in sys.modules))
"""


def test_import_and_help_leave_torch_timm_and_matplotlib_unimported():
    result = subprocess.run(
        [sys.executable, "-c", LIGHT_START], capture_output=True, text=True, env=os.environ, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"
    assert "train" in result.stdout and "predict" in result.stdout  # the help did print


def test_console_script_runs_main():
    script = Path(sys.executable).with_name("segwise")
    if not script.is_file():
        pytest.skip("the segwise console script is not installed in this environment")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("usage: segwise")


def test_user_mistake_in_a_real_process_is_one_line_and_exit_code_2(tmp_path):
    result = run_cli_subprocess("train", str(tmp_path / "nowhere"))
    assert_one_line_error(result, "nowhere", "not found")


INTERRUPTED = """
import sys
import segwise.cli.demo as demo
def interrupted(args):
    raise KeyboardInterrupt
demo._list_models = interrupted  # as if Ctrl-C arrived while the command ran
from segwise.cli import main
sys.exit(main(["list-models"]))
"""


def test_interrupt_exits_130_without_a_traceback():
    result = subprocess.run(
        [sys.executable, "-c", INTERRUPTED], capture_output=True, text=True, env=os.environ, timeout=120
    )
    assert result.returncode == 130
    assert result.stderr.strip() == "segwise: interrupted"


# ---- in process: main() and the run_cli harness --------------------------------------------------


def test_debug_mode_raises_the_error_instead(monkeypatch):
    monkeypatch.setenv("SEGWISE_DEBUG", "1")
    with pytest.raises(SegwiseError, match="no architecture matches"):
        main(["list-models", "no-such-arch*"])


def test_usage_errors_exit_2_and_help_exits_0():
    usage = run_cli("train", "--epochs", "many")
    assert usage.returncode == 2 and "usage: segwise train" in usage.stderr
    assert "invalid int value: 'many'" in usage.stderr
    assert run_cli("--help").returncode == 0
    assert run_cli().returncode == 2


def test_a_crash_reads_as_a_traceback_with_exit_code_1(monkeypatch):
    import segwise.cli.demo as demo

    def crash(args):
        raise RuntimeError("a bug, not a user mistake")

    monkeypatch.setattr(demo, "_list_models", crash)
    result = run_cli("list-models")
    assert result.returncode == 1
    assert "Traceback" in result.stderr and "RuntimeError: a bug, not a user mistake" in result.stderr


def test_run_cli_restores_the_working_directory_and_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("SEGWISE_DEBUG", "1")
    before = os.getcwd(), dict(os.environ)
    result = run_cli("list-models", "no-such-arch*", cwd=tmp_path)  # SEGWISE_DEBUG is not passed on
    assert_one_line_error(result, "no architecture matches")
    assert (os.getcwd(), dict(os.environ)) == before


def test_the_package_loads_its_public_names_on_first_use():
    import segwise

    assert sorted(segwise.__all__) == sorted(
        ["Predictor", "SegwiseError", "__version__", "create_model", "list_models", "load", "train"]
    )
    assert set(segwise.__all__) <= set(dir(segwise))
    assert segwise.SegwiseError is SegwiseError
    assert callable(segwise.train) and callable(segwise.load) and "unet" in segwise.list_models()
    with pytest.raises(AttributeError, match="no attribute 'trian'"):
        segwise.trian  # noqa: B018


def test_every_help_example_parses():
    parser_of = _subparsers()
    for name, parser in parser_of.items():
        lines = parser.epilog.splitlines()
        assert lines[0] == "example:" and len(lines) > 1, name
        for line in lines[1:]:
            _parse_example(line)


def _subparsers() -> dict:
    import argparse

    from segwise.cli import build_parser

    (commands,) = (a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return dict(commands.choices)


def _parse_example(line: str):
    """Parse a `segwise ...` (or `torchrun ... -m segwise ...`) example line; fail when the CLI refuses it."""
    import shlex

    from segwise.cli import build_parser

    words = shlex.split(line, comments=True)
    start = words.index("segwise") + 1 if "segwise" in words else None
    if start is None:
        start = next(i for i, word in enumerate(words) if word.endswith("/segwise")) + 1
    try:
        return build_parser().parse_args(words[start:])
    except SystemExit as exit:
        raise AssertionError(f"the example no longer parses: {line!r}") from exit


def test_help_examples_helper_rejects_a_wrong_example(capsys):
    with pytest.raises(AssertionError, match="no longer parses"):
        _parse_example("segwise train data --no-such-flag")
    assert _parse_example("torchrun --nproc-per-node 2 -m segwise train d  # note").data == "d"
