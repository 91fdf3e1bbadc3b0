"""Post-processing chosen on data: the chooser on fixtures built to need an option (or not to), the
per-class Steps it feeds, postprocess.json as predict and eval apply it, and `segwise tune-postprocess`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import segwise
from segwise.errors import SegwiseError
from segwise.evaluate import evaluate_run, read_truth, run_source, split_pairs
from segwise.inference.choose import choose_postprocessing, min_sizes
from segwise.inference.postprocess import Cleaning, Steps
from segwise.inference.tuned import Kept, applied_steps, read_postprocess, write_postprocess
from segwise.io import read_mask
from segwise.metrics import confusion_matrix_for
from segwise.task import Task
from segwise.tune import held_out_predictions, tune_postprocess

from .conftest import run_cli
from .test_cli import assert_one_line_error
from .test_predict_cli import binary_run, noise_image

BINARY = Task("binary", 2)
SIZE = 64  # 4096 pixels: the minimum sizes tried are min_sizes(4096) = [2, 4, 16, 64]
# 2×2 specks away from the squares below (not touching them, nor each other, at a corner)
SPECKS = [(2, 2), (2, 40), (2, 56), (34, 2), (34, 20), (58, 2), (58, 20), (58, 30), (20, 40), (20, 56)]


def squares() -> np.ndarray:
    """Truth of one image: two objects, 20×20 and 12×12."""
    truth = np.zeros((SIZE, SIZE), np.uint8)
    truth[10:30, 10:30] = 1
    truth[40:52, 40:52] = 1
    return truth


def two_class(foreground: np.ndarray) -> np.ndarray:
    """A binary run's probabilities from the foreground's."""
    return np.stack([1 - foreground, foreground]).astype(np.float32)


def binary_samples(prediction_of, images: int = 4) -> list[tuple[np.ndarray, np.ndarray]]:
    """`images` copies of (probabilities, truth) with P(foreground) = prediction_of(truth)."""
    return [(two_class(prediction_of(squares())), squares()) for _ in range(images)]


def kept_of(choices, name: str) -> dict:
    return next(choice for choice in choices.classes if choice.name == name).kept.to_dict()


def assert_scores_are_exact(task: Task, samples, choices) -> None:
    """Every class's recorded score after its kept options equals the metrics module's count of the
    masks `Steps` makes with them (that class's options alone, as the chooser judges each class)."""
    for choice in (c for c in choices.classes if c.pixels):
        if task.per_label:
            threshold = [0.5] * task.num_classes
            threshold[choice.index] = choice.kept.threshold or 0.5
        else:
            threshold = choice.kept.threshold
        steps = Steps(task, threshold, per_class={choice.index: choice.kept.cleaning})
        matrix = confusion_matrix_for(task)
        for probabilities, truth in samples:
            prediction = steps(probabilities).astype(np.uint8)
            matrix.update(torch.from_numpy(prediction)[None], torch.from_numpy(truth)[None])
        expected = getattr(matrix, choices.metric)()[choice.index].item()
        assert choice.after == pytest.approx(expected, abs=1e-12), choice.name


# --- the chooser on fixtures built to need an option, and on ones built not to ------------------------


def test_specks_keep_a_minimum_size_and_nothing_else():
    def with_specks(truth):
        p = np.where(truth == 1, 0.9, 0.1)
        for y, x in SPECKS:  # as sure as the objects: no threshold separates them
            p[y : y + 2, x : x + 2] = 0.9
        return p

    samples = binary_samples(with_specks)
    choices = choose_postprocessing(BINARY, ["background", "cell"], samples)
    assert min_sizes(SIZE * SIZE) == [2, 4, 16, 64]
    assert kept_of(choices, "cell") == {"min_size": 16}  # the smallest size that removes 4-pixel specks
    cell = choices.classes[0]
    assert cell.before == pytest.approx(544 / (544 + 40)) and cell.after == 1.0
    assert [(t.option, t.kept) for t in cell.trials] == [
        ("threshold", False),
        ("min_size", True),
        ("fill_holes", False),
        ("largest", False),  # would remove the smaller true object
    ]
    assert_scores_are_exact(BINARY, samples, choices)


def test_holes_inside_objects_keep_hole_filling():
    def with_holes(truth):
        p = np.where(truth == 1, 0.9, 0.1)
        p[15:22, 15:22] = 0.1  # a hole in the 20×20 object
        return p

    samples = binary_samples(with_holes)
    choices = choose_postprocessing(BINARY, ["background", "cell"], samples, metric="dice")
    assert kept_of(choices, "cell") == {"fill_holes": True}
    assert choices.classes[0].after == 1.0
    assert_scores_are_exact(BINARY, samples, choices)


def test_a_threshold_that_is_off_moves():
    samples = binary_samples(lambda truth: np.where(truth == 1, 0.38, 0.1))  # the argmax finds nothing
    choices = choose_postprocessing(BINARY, ["background", "cell"], samples)
    cell = choices.classes[0]
    assert cell.before == 0.0 and cell.after == 1.0
    # Every threshold in [0.1, 0.38) separates them; the tie goes to the one nearest 0.5.
    assert kept_of(choices, "cell") == {"threshold": 0.35}
    assert_scores_are_exact(BINARY, samples, choices)


def test_a_false_object_larger_than_every_size_keeps_the_largest():
    truth = np.zeros((SIZE, SIZE), np.uint8)
    truth[10:30, 10:30] = 1
    p = np.where(truth == 1, 0.9, 0.1)
    p[40:50, 40:50] = 0.9  # a false object of 100 pixels: more than the largest minimum size tried (64)
    samples = [(two_class(p), truth)] * 2
    choices = choose_postprocessing(BINARY, ["background", "cell"], samples)
    assert kept_of(choices, "cell") == {"largest": True}
    assert_scores_are_exact(BINARY, samples, choices)


def test_clean_predictions_keep_nothing():
    samples = binary_samples(lambda truth: np.where(truth == 1, 0.9, 0.1))
    choices = choose_postprocessing(BINARY, ["background", "cell"], samples)
    cell = choices.classes[0]
    assert cell.kept == Kept() and cell.before == cell.after == 1.0
    assert len(cell.trials) == 4 and not any(trial.kept for trial in cell.trials)


def test_a_gain_under_the_margin_is_not_kept():
    def one_small_speck(truth):
        p = np.where(truth == 1, 0.9, 0.1)
        p[2, 2:4] = 0.9  # 2 false pixels against 544 true ones: IoU +0.0037
        return p

    samples = binary_samples(one_small_speck)
    strict = choose_postprocessing(BINARY, ["background", "cell"], samples, margin=0.005)
    assert kept_of(strict, "cell") == {}
    size_trial = strict.classes[0].trials[1]
    assert size_trial.option == "min_size" and 0 < size_trial.after - size_trial.before < 0.005
    lenient = choose_postprocessing(BINARY, ["background", "cell"], samples, margin=0.001)
    assert kept_of(lenient, "cell") == {"min_size": 4}


def test_multiclass_specks_of_one_class_inside_another():
    task = Task("multiclass", 3)
    truth = np.zeros((SIZE, SIZE), np.uint8)
    truth[5:35, 5:35] = 1
    truth[45:57, 45:57] = 2
    predicted = truth.copy()
    for y, x in [(10, 10), (10, 20), (20, 10), (25, 25)]:
        predicted[y : y + 2, x : x + 2] = 2  # class-2 specks inside the class-1 square
    probabilities = np.full((3, SIZE, SIZE), 0.1, np.float32)
    np.put_along_axis(probabilities, predicted[None].astype(np.int64), 0.8, axis=0)
    samples = [(probabilities, truth)] * 3
    choices = choose_postprocessing(task, ["background", "road", "car"], samples)
    assert kept_of(choices, "road") == {} and kept_of(choices, "car") == {"min_size": 16}
    assert_scores_are_exact(task, samples, choices)
    # Applied, the specks take the class around them: the whole mask is right.
    steps = Steps(task, per_class={2: Cleaning(min_size=16)})
    assert (steps(probabilities) == truth).all()


def test_per_label_choices_are_each_labels_own():
    task = Task("multilabel", 2)
    truth = np.stack([squares(), squares()])
    truth[1, 40:52, 40:52] = 0  # label 1: one object
    road = np.where(truth[0] == 1, 0.38, 0.1)  # under the default 0.5
    car = np.where(truth[1] == 1, 0.9, 0.1)
    car[40:50, 40:50] = 0.9  # a false 100-pixel object
    samples = [(np.stack([road, car]).astype(np.float32), truth)] * 2
    choices = choose_postprocessing(task, ["road", "car"], samples)
    assert kept_of(choices, "road") == {"threshold": 0.35}
    assert kept_of(choices, "car") == {"largest": True}
    assert_scores_are_exact(task, samples, choices)


def test_a_class_absent_from_the_truth_gets_nothing_and_bad_options_fail():
    task = Task("multiclass", 3)
    truth = squares()  # class 2 never appears
    probabilities = np.stack([truth == 0, truth == 1, np.zeros_like(truth)]).astype(np.float32)
    choices = choose_postprocessing(task, ["background", "road", "car"], [(probabilities, truth)])
    car = choices.classes[1]
    assert (car.pixels, car.before, car.trials) == (0, None, [])
    with pytest.raises(SegwiseError, match="metric 'f1'"):
        choose_postprocessing(task, ["b", "r", "c"], [], metric="f1")
    with pytest.raises(SegwiseError, match="margin 2"):
        choose_postprocessing(task, ["b", "r", "c"], [], margin=2)
    with pytest.raises(SegwiseError, match="no predictions"):
        choose_postprocessing(task, ["b", "r", "c"], [])


# --- per-class Steps ---------------------------------------------------------------------------------------


def test_steps_clean_each_class_by_its_own_settings():
    task = Task("multiclass", 3)
    mask = np.zeros((8, 8), np.int64)
    mask[0, 0] = 1  # one-pixel objects of both classes
    mask[7, 7] = 2
    mask[2:6, 2:6] = 1
    mask[3:5, 3:5] = 0  # a hole in class 1
    cleaned = Steps(task, per_class={1: Cleaning(min_size=2)}).clean(mask)
    assert cleaned[0, 0] == 0 and cleaned[7, 7] == 2 and (cleaned[3:5, 3:5] == 0).all()
    filled = Steps(task, min_size=2, per_class={1: Cleaning(fill_holes=True)}).clean(mask)
    # class 1 by its own setting (holes filled, its speck kept), class 2 by the shared one (removed)
    assert filled[0, 0] == 1 and filled[7, 7] == 0 and (filled[3:5, 3:5] == 1).all()
    labels = Task("multilabel", 2)
    stack = np.stack([mask == 1, mask == 1])
    planes = Steps(labels, per_class={0: Cleaning(min_size=2)}).clean(stack)
    assert not planes[0, 0, 0] and planes[1, 0, 0]  # label 1 left as it was
    with pytest.raises(SegwiseError, match="min_size 0"):
        Cleaning(min_size=0)


# --- postprocess.json: recorded, read back, applied, refused when bad --------------------------------------


def recorded(folder: Path, classes: dict, **fields) -> Path:
    record = {"metric": "iou", "margin": 0.005, "split": "val", "images": 2, "classes": classes, **fields}
    return write_postprocess(folder, record)


def test_the_record_reads_back_and_supersedes_threshold_json(tmp_path):
    samples = binary_samples(lambda truth: np.where(truth == 1, 0.4, 0.1))
    choices = choose_postprocessing(BINARY, ["background", "cell"], samples)
    path = write_postprocess(tmp_path, choices.record("val"))
    assert read_postprocess(tmp_path, BINARY, ["background", "cell"]) == {1: Kept(0.35)}
    assert json.loads(path.read_text())["classes"]["cell"]["tried"][0]["option"] == "threshold"
    (tmp_path / "threshold.json").write_text('{"threshold": 0.7, "dice": 0.9, "split": "val"}')

    applied = applied_steps(tmp_path, BINARY, ["background", "cell"])
    assert (applied.threshold, applied.threshold_file) == (0.35, path)
    assert "post-processing from" in applied.message and "class 'cell' threshold 0.35" in applied.message
    given = applied_steps(tmp_path, BINARY, ["background", "cell"], threshold=0.5, min_size=3)
    assert (given.steps.threshold, given.threshold_file, given.steps.cleaning(1)) == (0.5, None, Cleaning(3))
    assert "every recorded option replaced by the flags" in given.message
    ignored = applied_steps(tmp_path, BINARY, ["background", "cell"], recorded=False)
    assert (ignored.threshold, ignored.message) == (None, None)
    path.unlink()  # without postprocess.json, threshold.json applies as before
    legacy = applied_steps(tmp_path, BINARY, ["background", "cell"])
    assert (legacy.threshold, legacy.threshold_file) == (0.7, tmp_path / "threshold.json")


def test_flags_replace_one_option_and_keep_the_other_recorded_ones(tmp_path):
    task, names = Task("multiclass", 3), ["background", "road", "car"]
    recorded(
        tmp_path,
        {
            "road": {"index": 1, "kept": {"fill_holes": True}},
            "car": {"index": 2, "kept": {"min_size": 64, "largest": True}},
        },
    )
    applied = applied_steps(tmp_path, task, names, min_size=5)
    assert applied.steps.cleaning(1) == Cleaning(5, fill_holes=True)
    assert applied.steps.cleaning(2) == Cleaning(5, largest=True)
    assert "class 'road' fill holes; class 'car' largest object" in applied.message
    assert applied.threshold is None  # multiclass: no foreground threshold


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not a JSON file"),
        ('{"format": 0, "classes": {}}', "format 0"),
        ('{"format": 1, "classes": []}', "no 'classes'"),
        ('{"format": 1, "classes": {"dog": {"index": 1, "kept": {}}}}', "class 'dog' is not one of"),
        ('{"format": 1, "classes": {"cell": {"index": 3, "kept": {}}}}', "another index"),
        ('{"format": 1, "classes": {"cell": {"index": 1, "kept": {"dilate": 2}}}}', "unknown options"),
        ('{"format": 1, "classes": {"cell": {"index": 1, "kept": {"min_size": 0}}}}', "not valid"),
        ('{"format": 1, "classes": {"cell": {"index": 1, "kept": {"threshold": 1.5}}}}', "not valid"),
    ],
)
def test_a_bad_or_old_record_is_refused_naming_the_file(tmp_path, content, problem):
    (tmp_path / "postprocess.json").write_text(content)
    with pytest.raises(SegwiseError) as error:
        applied_steps(tmp_path, BINARY, ["background", "cell"])
    assert str(tmp_path / "postprocess.json") in str(error.value) and problem in str(error.value)
    assert "tune-postprocess" in str(error.value)


def test_a_threshold_is_refused_for_a_multiclass_run(tmp_path):
    recorded(tmp_path, {"road": {"index": 1, "kept": {"threshold": 0.3}}})
    with pytest.raises(SegwiseError, match="binary and per-label runs only"):
        read_postprocess(tmp_path, Task("multiclass", 3), ["background", "road", "car"])


def test_predict_applies_the_record_says_so_and_refuses_a_bad_one(tmp_path):
    run = binary_run(tmp_path, foreground_logit=0.4, threshold=0.3)  # P(cell) = 0.599 everywhere
    path = recorded(run, {"cell": {"index": 1, "kept": {"threshold": 0.65}}})
    image = noise_image(tmp_path / "in" / "a.png")
    result = run_cli("predict", run, image, "-o", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert f"post-processing from {path}: class 'cell' threshold 0.65" in result.stdout
    assert not read_mask(tmp_path / "out" / "a.png").any()  # 0.599 ≤ 0.65; threshold.json's 0.3 unused
    result = run_cli("predict", run, image, "-o", tmp_path / "raw", "--no-postprocess")
    assert result.returncode == 0 and "post-processing" not in result.stdout
    assert read_mask(tmp_path / "raw" / "a.png").all()  # the argmax
    path.write_text('{"format": 99}')
    assert_one_line_error(
        run_cli("predict", run, image, "-o", tmp_path / "bad"), str(path), "tune-postprocess"
    )
    assert not (tmp_path / "bad").exists()


# --- on a trained run: predict and eval apply exactly the recorded choices; the command end to end ---------


@pytest.fixture(scope="module")
def run_copy(trained_run, tmp_path_factory) -> Path:
    copy = tmp_path_factory.mktemp("tune_runs") / "tiny"
    shutil.copytree(trained_run, copy, ignore=shutil.ignore_patterns("last.pt"))
    return copy


def test_predict_and_eval_output_differs_exactly_as_the_choices_say(run_copy, shapes_data, tmp_path):
    predictor = segwise.load(run_copy, device="cpu")
    names = predictor.class_names
    path = recorded(
        run_copy,
        {names[1]: {"index": 1, "kept": {"min_size": 40}}, names[2]: {"index": 2, "kept": {"largest": True}}},
    )
    steps = Steps(predictor.task, per_class={1: Cleaning(40), 2: Cleaning(largest=True)})
    images = sorted((shapes_data / "val" / "images").iterdir())[:3]
    try:
        report = predictor.predict_to_folder(images, tmp_path / "out")
        raw = predictor.predict_to_folder(images, tmp_path / "raw", postprocess=False)
        assert report.postprocessing.startswith(
            f"post-processing from {path}: class '{names[1]}' min size 40 px"
        )
        changed = 0
        for image in images:
            expected = steps(predictor.predict_proba(image))
            assert (read_mask(tmp_path / "out" / image.name) == expected).all()
            changed += int((read_mask(tmp_path / "raw" / image.name) != expected).sum())
        assert raw.postprocessing is None and changed > 0, "the fixture should need cleaning"

        options = {"split": "test", "worst": 0, "device": "cpu"}  # the 2 test images
        applied = evaluate_run(run_copy, shapes_data, output=tmp_path / "ev", **options)
        plain = evaluate_run(run_copy, shapes_data, output=tmp_path / "ev0", postprocess=False, **options)
    finally:
        path.unlink()
    assert applied.postprocessing == report.postprocessing and plain.postprocessing is None
    matrix = confusion_matrix_for(predictor.task)
    for pair in split_pairs(shapes_data, "test")[0]:
        image, truth = read_truth(pair, predictor.config.classes)
        prediction = torch.from_numpy(steps(predictor.predict_proba(image)))
        matrix.update(prediction[None], torch.from_numpy(truth)[None])
    assert applied.metrics["overall"]["mean_iou"] == pytest.approx(matrix.mean_iou(), abs=1e-12)
    assert applied.metrics["overall"]["mean_iou"] != plain.metrics["overall"]["mean_iou"]


def test_tune_postprocess_command_writes_what_predict_reads(run_copy, shapes_data):
    result = run_cli("tune-postprocess", run_copy, shapes_data, "--margin", "0", "--device", "cpu")
    try:
        assert result.returncode == 0, result.stderr
        record = json.loads((run_copy / "postprocess.json").read_text())
        assert (record["format"], record["split"], record["images"], record["metric"]) == (1, "val", 6, "iou")
        assert set(record["classes"]) == set(segwise.load(run_copy).class_names[1:])
        assert f"wrote {run_copy / 'postprocess.json'}" in result.stdout
        assert "chosen on val: 6 images, IoU, margin 0.0" in result.stdout
        predictor = segwise.load(run_copy, device="cpu")
        assert read_postprocess(run_copy, predictor.task, predictor.class_names) is not None
    finally:
        (run_copy / "postprocess.json").unlink(missing_ok=True)
    assert_one_line_error(run_cli("tune-postprocess", run_copy, shapes_data, "--margin", "-1"), "margin -1")


def test_a_folds_parent_is_tuned_on_out_of_fold_predictions(run_copy, shapes_data, tmp_path):
    parent = tmp_path / "cv"
    val = sorted((shapes_data / "val" / "images").iterdir())
    held = [val[:4], val[4:]]
    for index, images in enumerate(held):
        shutil.copytree(run_copy, parent / f"fold_{index}")
        (parent / f"fold_{index}" / "val.txt").write_text(
            "".join(f"{image.relative_to(shapes_data).as_posix()}\n" for image in images)
        )
    (parent / "folds.json").write_text(json.dumps({"k": 2}))

    predictions = held_out_predictions(parent, shapes_data, device="cpu")
    assert (predictions.split, predictions.images) == ("out-of-fold (2 folds)", 6)
    source = run_source(predictions.config, shapes_data)
    expected = [
        read_truth(pair, predictions.config.classes, source)[1] for pair in split_pairs(shapes_data, "val")[0]
    ]
    got = [truth for _, truth in predictions.samples]
    assert len(got) == 6 and all((a == b).all() for a, b in zip(got, expected, strict=True))

    report = tune_postprocess(parent, shapes_data, device="cpu")
    assert report.path == parent / "postprocess.json" and report.choices.images == 6
    with pytest.raises(SegwiseError, match="folds parent"):
        held_out_predictions(parent, shapes_data, split="test")
    shutil.rmtree(parent / "fold_0")
    with pytest.raises(SegwiseError, match="expected fold_0"):
        held_out_predictions(parent, shapes_data)
