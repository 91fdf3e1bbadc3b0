"""Evaluation, reports and comparisons: numbers against the metrics module, files, CLI, a real browser."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

import segwise
from segwise.data.dataset import read_pair
from segwise.data.formats import find_pairs
from segwise.evaluate import evaluate_run, evaluate_split, write_evaluation
from segwise.metrics import BoundaryScores, ConfusionMatrix
from segwise.report.figures import normalize_rows

from .conftest import TINY, run_cli, write_pair
from .test_cli import assert_one_line_error
from .test_predict_cli import binary_run

CHROMIUM = Path("/usr/bin/chromium")


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory) -> Path:
    """A copy of the shared run, so that eval/ and report.html do not change the original."""
    copy = tmp_path_factory.mktemp("eval_runs") / "tiny"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("last.pt"))
    return copy


@pytest.fixture(scope="module")
def evaluated(run_copy, shapes_data) -> Path:
    result = run_cli("eval", str(run_copy), str(shapes_data), "--split", "val", "--worst", "3")
    assert result.returncode == 0, result.stderr
    assert "mIoU" in result.stdout and "report:" in result.stdout
    return run_copy


def test_metrics_json_equals_the_metrics_module(run_copy, shapes_data, tmp_path):
    predictor = segwise.load(run_copy)
    pairs = find_pairs(shapes_data)["val"]
    write_evaluation(evaluate_split(predictor, pairs, worst_k=2), predictor, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())

    # The same predictions counted independently, one image at a time.
    classes = predictor.config.classes
    matrix = ConfusionMatrix(classes.num_classes, per_image=True)
    boundary = BoundaryScores(classes.num_classes)
    for image_path, mask_path in pairs:
        image, mask = read_pair(image_path, mask_path)
        prediction = torch.from_numpy(predictor.predict(image))[None]
        truth = torch.from_numpy(classes.to_indices(mask, mask_path))[None]
        matrix.update(prediction, truth)
        boundary.update(prediction, truth)

    def same(value, expected):
        expected = float(expected)
        return value is None if np.isnan(expected) else value == pytest.approx(expected, abs=1e-12)

    overall = metrics["overall"]
    assert same(overall["mean_iou"], matrix.mean_iou())
    assert same(overall["mean_iou_imagewise"], matrix.mean_iou("image"))
    assert same(overall["pixel_accuracy"], matrix.pixel_accuracy())
    assert same(overall["frequency_weighted_iou"], matrix.frequency_weighted_iou())
    assert metrics["images"] == len(pairs)
    for index, name in enumerate(classes.names):
        scores = metrics["per_class"][name]
        for key in ("iou", "dice", "precision", "recall", "accuracy"):
            assert same(scores[key], getattr(matrix, key)()[index]), (name, key)
            assert same(scores[f"{key}_imagewise"], getattr(matrix, key)("image")[index]), (name, key)
        assert same(scores["boundary_iou"], boundary.iou()[index])
        assert same(scores["boundary_f1"], boundary.f1()[index])
        assert scores["support"] == int(matrix.matrix[index].sum())

    # Confusion-matrix rows sum to each class's support; normalized rows sum to 1 where a class is present.
    counts = np.asarray(metrics["confusion_matrix"]["counts"])
    assert (counts == matrix.matrix.numpy()).all()
    supports = [metrics["per_class"][name]["support"] for name in classes.names]
    assert counts.sum(1).tolist() == supports
    normalized = normalize_rows(counts)
    assert np.allclose(normalized.sum(1), [1.0 if s > 0 else 0.0 for s in supports])

    with open(tmp_path / "per_image.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(pairs)
    stats = matrix.per_image_stats()
    for row, stat in zip(rows, stats, strict=True):
        assert int(row["pixels"]) == stat["pixels"]
        assert float(row["mean_iou"]) == pytest.approx(stat["mean_iou"], abs=1e-6)


def test_eval_command_writes_every_output(evaluated, shapes_data):
    folder = evaluated / "eval" / "val"
    for name in ("metrics.json", "per_image.csv", "confusion.png", "iou_per_class.png", "worst.png"):
        assert (folder / name).is_file() and (folder / name).stat().st_size > 0, name
    metrics = json.loads((folder / "metrics.json").read_text())
    assert list(metrics["per_class"]) == ["background", "disc", "rectangle", "triangle", "ring"]
    assert "best_threshold" not in metrics  # multiclass
    assert (evaluated / "report.html").is_file()


def test_report_is_self_contained_and_regenerates(evaluated):
    (evaluated / "report.html").unlink()
    result = run_cli("report", str(evaluated))
    assert result.returncode == 0, result.stderr
    html = (evaluated / "report.html").read_text()
    for text in (
        "Training",
        "learning-rate schedule",
        "Trained on",
        "Evaluation: val",
        "Dataset: val",
        "Config",
        "viewport",
    ):
        assert text in html, text
    assert "http://" not in html and "https://" not in html and "<script" not in html
    assert html.count('src="data:image/png;base64,') >= 6


def test_compare_prints_a_side_by_side_table_and_a_png(evaluated, tmp_path):
    second = tmp_path / "second"
    shutil.copytree(evaluated, second)
    result = run_cli("compare", str(evaluated), str(second), "-o", str(tmp_path / "cmp.png"))
    assert result.returncode == 0, result.stderr
    header, *rows = result.stdout.splitlines()[:7]
    assert "tiny" in header and "second" in header
    assert [row.split()[0] for row in rows] == ["background", "disc", "rectangle", "triangle", "ring", "mIoU"]
    assert (tmp_path / "cmp.png").stat().st_size > 0
    assert_one_line_error(
        run_cli("compare", str(evaluated), str(tmp_path), "-o", str(tmp_path / "x.png")),
        "metrics.json",
        "segwise eval",
    )


def test_eval_on_data_with_other_classes_is_one_line_and_exit_2(run_copy, tmp_path):
    write_pair(tmp_path / "other", "a", mask_values=(0, 7))
    write_pair(tmp_path / "other", "b", mask_values=(0, 7))
    assert_one_line_error(
        run_cli("eval", str(run_copy), str(tmp_path / "other"), "--split", "all", "-o", str(tmp_path / "o")),
        "a.png",
        "[7]",
        "not among the classes",
    )
    assert_one_line_error(
        run_cli("eval", str(run_copy), str(tmp_path / "other"), "--split", "test", "-o", str(tmp_path / "o")),
        "no 'test' split",
        "--split",
    )


def test_binary_run_reports_and_saves_the_best_threshold(tmp_path):
    data = tmp_path / "binary"
    for stem in ("a", "b", "c", "d", "e"):
        write_pair(data, stem, size=(32, 32), mask_values=(0, 255))
    run = segwise.train(
        data, runs_dir=tmp_path / "runs", name="bin", epochs=1, progress=False, **TINY
    ).run_dir
    result = run_cli("eval", str(run), str(data), "--split", "all", "--save-threshold")
    assert result.returncode == 0, result.stderr
    assert "best foreground threshold by Dice" in result.stdout
    metrics = json.loads((run / "eval" / "all" / "metrics.json").read_text())
    saved = json.loads((run / "threshold.json").read_text())
    assert saved["threshold"] == metrics["best_threshold"]["threshold"]

    # The reported Dice is the metrics module's Dice of `foreground probability > threshold`.
    predictor = segwise.load(run)
    classes = predictor.config.classes
    matrix = ConfusionMatrix(2)
    for image_path, mask_path in find_pairs(data)["all"]:
        image, mask = read_pair(image_path, mask_path)
        foreground = predictor.predict_proba(image)[1] > saved["threshold"]
        matrix.update(
            torch.from_numpy(foreground).long()[None], torch.from_numpy(classes.to_indices(mask))[None]
        )
    assert saved["dice"] == pytest.approx(float(matrix.dice()[1]), abs=1e-12)


# --- the report in a real browser -------------------------------------------------------------------------

PROBE = """<script>
window.__errors = [];
window.addEventListener("error", function (e) {
  window.__errors.push(String(e.message || (e.target && (e.target.src || "").slice(0, 60)) || "error"));
}, true);
var originalError = console.error;
console.error = function () { window.__errors.push(Array.prototype.join.call(arguments, " ")); originalError.apply(console, arguments); };
window.addEventListener("load", function () {
  var images = Array.prototype.slice.call(document.images);
  var result = {images: images.length, errors: window.__errors,
                loaded: images.filter(function (i) { return i.complete && i.naturalWidth > 0; }).length};
  var out = document.createElement("pre");
  out.id = "segwise-check";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


@pytest.fixture(scope="session")
def chromium() -> Path:
    """Debian's chromium; installed with apt-get when missing and running as root, else the test skips."""
    if not CHROMIUM.exists():
        if os.geteuid() != 0 or not shutil.which("apt-get"):
            pytest.skip("chromium is not installed and cannot be installed (not root or no apt-get)")
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for command in (["apt-get", "update"], ["apt-get", "install", "-y", "chromium"]):
            try:
                done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
            except (OSError, subprocess.TimeoutExpired) as error:
                pytest.skip(f"installing chromium failed: {error}")
            if done.returncode != 0:
                pytest.skip(f"`{' '.join(command)}` failed: {done.stderr.strip()[-300:]}")
        if not CHROMIUM.exists():
            pytest.skip("apt-get installed chromium but /usr/bin/chromium is missing")
    return CHROMIUM


def _headless(chromium: Path, profile: Path, *args: str) -> subprocess.CompletedProcess:
    command = [
        str(chromium),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={profile}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=180)


def test_report_renders_in_headless_chromium(evaluated, chromium, tmp_path):
    html = (evaluated / "report.html").read_text()
    probe = tmp_path / "probe.html"
    probe.write_text(html.replace("<head>", "<head>" + PROBE, 1))
    result = _headless(
        chromium,
        tmp_path / "profile",
        "--enable-logging=stderr",
        "--v=0",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
    )
    assert result.returncode == 0, result.stderr[-2000:]
    marker = '<pre id="segwise-check">'
    assert marker in result.stdout, result.stderr[-2000:]
    check = json.loads(result.stdout.split(marker, 1)[1].split("</pre>", 1)[0])
    assert check["errors"] == []
    assert check["images"] >= 6 and check["loaded"] == check["images"], check
    console = [line for line in result.stderr.splitlines() if "CONSOLE" in line]
    assert not console, console

    for name, size in (("laptop", "1280,2000"), ("phone", "390,2400")):
        shot = evaluated / f"report-{name}.png"
        done = _headless(
            chromium,
            tmp_path / f"profile-{name}",
            "--hide-scrollbars",
            f"--window-size={size}",
            f"--screenshot={shot}",
            (evaluated / "report.html").as_uri(),
        )
        assert done.returncode == 0, done.stderr[-2000:]
        assert shot.stat().st_size > 10_000
        shutil.copy(shot, tmp_path / shot.name)  # kept beside the test's other outputs


# --- evaluate_run: the library behind `segwise eval` -----------------------------------------------------------


def test_evaluate_run_into_another_folder_leaves_the_run_alone(run_copy, shapes_data, tmp_path):
    report = evaluate_run(run_copy, shapes_data, split="val", output=tmp_path / "ev", worst=2, device="cpu")
    assert report.output == tmp_path / "ev" and report.report is None
    assert report.images == len(find_pairs(shapes_data)["val"])
    assert json.loads((tmp_path / "ev" / "metrics.json").read_text()) == report.metrics
    assert report.metrics["images"] == report.images
    assert (report.best_threshold, report.threshold_file) == (None, None)  # multiclass: no threshold
    assert (tmp_path / "ev" / "worst.png").is_file()


def test_evaluate_run_saves_a_binary_runs_threshold_and_refreshes_the_report(tmp_path):
    run = binary_run(tmp_path, foreground_logit=0.4)  # P(cell) = 0.599 everywhere
    data = tmp_path / "data"
    for stem in ("a", "b"):
        write_pair(data, stem, size=(32, 32), mask_values=(0, 255))
    unsaved = evaluate_run(run, data, split="all", output=tmp_path / "elsewhere", device="cpu")
    assert unsaved.best_threshold is not None and unsaved.threshold_file is None
    assert not (run / "threshold.json").exists() and not (run / "report.html").exists()

    report = evaluate_run(run, data, split="all", save_threshold=True, device="cpu")
    assert report.output == run / "eval" / "all" and (report.output / "metrics.json").is_file()
    assert report.report == run / "report.html" and "Evaluation: all" in report.report.read_text()
    # Every threshold under 0.599 calls the whole image foreground; the tie goes to the one nearest 0.5.
    threshold, dice = report.best_threshold
    assert threshold == 0.5 and dice == pytest.approx(2 / 3)
    assert report.metrics["best_threshold"] == {"threshold": threshold, "dice": dice}
    assert report.threshold_file == run / "threshold.json"
    saved = json.loads(report.threshold_file.read_text())
    assert saved == {"threshold": threshold, "dice": dice, "split": "all"}
    predicted = segwise.load(run, device="cpu").predict_to_folder([data / "images"], tmp_path / "out")
    assert (predicted.threshold, predicted.threshold_file) == (threshold, run / "threshold.json")


# --- data without a val split: eval scores the images the run held out ------------------------------------


@pytest.fixture(scope="module")
def flat_run(tmp_path_factory) -> tuple[Path, Path]:
    """A run trained on a folder without splits (images/ + masks/): it held out a seeded share itself."""
    data = tmp_path_factory.mktemp("flat") / "data"
    for stem in ("a", "b", "c", "d", "e", "f"):
        write_pair(data, stem, size=(32, 32), mask_values=(0, 1))
    runs = tmp_path_factory.mktemp("flat-runs")
    run = segwise.train(data, runs_dir=runs, name="flat", epochs=1, progress=False, **TINY).run_dir
    return run, data


def test_a_run_on_data_without_splits_records_the_images_it_held_out(flat_run):
    run, data = flat_run
    held_out = (run / "val.txt").read_text().splitlines()
    assert held_out and all(line.startswith("images/") for line in held_out)
    config = segwise.load(run, device="cpu").config
    assert len(held_out) == config.data["val_images"]
    assert len(held_out) + config.data["train_images"] == 6


def test_eval_scores_the_held_out_images_by_default(flat_run, tmp_path):
    run, data = flat_run
    report = evaluate_run(run, data, output=tmp_path / "out", device="cpu")
    held_out = (run / "val.txt").read_text().splitlines()
    assert report.held_out == run / "val.txt" and report.images == len(held_out)
    with open(tmp_path / "out" / "per_image.csv") as handle:
        scored = [Path(row["image"]).relative_to(data).as_posix() for row in csv.DictReader(handle)]
    assert scored == held_out  # the same images, none the run trained on

    result = run_cli("eval", str(run), str(data), "-o", str(tmp_path / "cli"))
    assert result.returncode == 0, result.stderr
    assert f"the {len(held_out)} images the run held out" in result.stdout


def test_eval_on_data_missing_a_held_out_image_is_one_line(flat_run, tmp_path):
    run, data = flat_run
    moved = tmp_path / "data"
    shutil.copytree(data, moved)
    first = (run / "val.txt").read_text().splitlines()[0]
    (moved / first).unlink()
    (moved / "masks" / Path(first).name).unlink()
    result = run_cli("eval", str(run), str(moved), "-o", str(tmp_path / "out"))
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "held out" in result.stderr and first in result.stderr and "--split" in result.stderr
