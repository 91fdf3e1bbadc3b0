"""Self-configuration: `segwise plan` and the plan `segwise train` makes when given none."""

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import segwise
from segwise.config import RunConfig, TrainConfig, load_config
from segwise.constants import IGNORE_INDEX
from segwise.data.dataset import SegmentationData, choose_size
from segwise.engine import plan as planning
from segwise.engine.plan import (
    class_weights,
    loss_options,
    make_plan,
    planned_augment,
    planned_epochs,
    planned_loss,
    probe_batch_size,
    write_plan,
)
from segwise.errors import SegwiseError
from segwise.losses import build_loss
from segwise.task import Classes

from .conftest import TINY, run_cli
from .test_data import SHARED, needs_shared
from .test_multilabel_train import write_multilabel_data

TINY_MODEL = {"encoder": TINY["encoder"], "options": TINY["options"]}


def _data(masks: np.ndarray, num_classes: int, multilabel: bool = False) -> SegmentationData:
    """Training data from masks N×H×W (multilabel: N×C×H×W) on black images."""
    images = np.zeros((masks.shape[0], *masks.shape[-2:], 3), np.uint8)
    classes = Classes([f"c{i}" for i in range(num_classes)], list(range(num_classes)), multilabel=multilabel)
    return SegmentationData(
        Path("."), classes, masks.shape[-2:], 3, images, masks, images[:1], masks[:1], [], [], []
    )


def test_size_keeps_the_typical_aspect_ratio_in_multiples_of_32():
    flukes = [(384, 768)] * 5 + [(400, 790), (380, 770)]  # 2:1 crops
    assert choose_size(flukes, max_side=512) == (256, 512)
    # Half portrait, half landscape plus one square: the median shape exists in the set, not a blend.
    mixed = [(300, 400)] * 3 + [(400, 300)] * 2
    assert choose_size(mixed, max_side=512) == (288, 416)  # 300×400 in multiples of 32
    assert choose_size([(100, 150)] * 3, max_side=512) == (100, 150)  # uniform and small: kept as is


def test_class_weights_follow_their_formulas():
    # Two images 1×10: image 0 holds classes 0 (6 px) and 1 (4 px); image 1 holds 0 (9 px) and 2 (1 px).
    masks = np.array([[[0] * 6 + [1] * 4], [[0] * 9 + [2] * 1]], np.uint8)
    data = _data(masks, 4)  # class 3 never appears
    frequency = np.array([15, 4, 1]) / 20
    inverse = 1 / frequency
    np.testing.assert_allclose(class_weights(data, "inverse")[:3], inverse / inverse.mean(), rtol=1e-5)
    one_minus = 1 - frequency
    np.testing.assert_allclose(class_weights(data, "one_minus")[:3], one_minus / one_minus.mean(), rtol=1e-5)
    # median frequency: f_c over the pixels of the images containing c (Eigen & Fergus)
    f = np.array([15 / 20, 4 / 10, 1 / 10])
    np.testing.assert_allclose(class_weights(data, "median_frequency")[:3], np.median(f) / f, rtol=1e-5)
    assert class_weights(data, "inverse")[3] == 0 and class_weights(data, "median_frequency")[3] == 0


def test_void_pixels_do_not_count_towards_frequencies():
    masks = np.array([[[0, 0, 1, IGNORE_INDEX, IGNORE_INDEX]]], np.uint8)
    np.testing.assert_allclose(class_weights(_data(masks, 2), "one_minus"), [2 / 3, 4 / 3], rtol=1e-5)


def test_multilabel_class_weights_follow_their_formulas_per_label():
    # Two images 1×6, four labels; X is an ignored element, label 3 never appears.
    X = IGNORE_INDEX
    masks = np.array(
        [
            [[[1, 1, 1, 0, 0, 0]], [[1, 0, 0, 0, 0, X]], [[0, 0, 0, 0, 0, 0]], [[0] * 6]],
            [[[1, 1, 0, 0, 0, 0]], [[0, 0, 0, 0, 0, 0]], [[1, 1, 1, 1, 0, 0]], [[0] * 6]],
        ],
        np.uint8,
    )
    data = _data(masks, 4, multilabel=True)
    # label c's positive elements over its non-ignored elements: 5/12, 1/11 (one ignored), 4/12
    frequency = np.array([5 / 12, 1 / 11, 4 / 12])
    inverse = 1 / frequency
    np.testing.assert_allclose(class_weights(data, "inverse")[:3], inverse / inverse.mean(), rtol=1e-5)
    one_minus = 1 - frequency
    np.testing.assert_allclose(class_weights(data, "one_minus")[:3], one_minus / one_minus.mean(), rtol=1e-5)
    # median frequency: over the images holding the label (1 is in image 0 only, 2 in image 1 only)
    np.testing.assert_allclose(class_weights(data, "median_frequency")[:3], [1.0, 25 / 12, 5 / 8], rtol=1e-5)
    assert all(class_weights(data, w)[3] == 0 for w in ("inverse", "one_minus", "median_frequency"))
    np.testing.assert_allclose(planning.class_frequencies(data), [5 / 12, 1 / 11, 4 / 12, 0], rtol=1e-6)


def test_multilabel_class_weights_reach_every_term_but_the_lovasz_hinge():
    weights = [0.5, 2.0, 1.0]
    classes = Classes(["a", "b", "c"], [0, 1, 2], multilabel=True)
    loss = planned_loss(TrainConfig(loss="bce+dice+lovasz"), classes.task, weights)
    for name in ("bce", "dice"):
        assert torch.equal(loss.terms[name].class_weights, torch.tensor(weights))
    assert loss.terms["lovasz"].class_weights is None  # it would refuse them: it pools all labels
    target = torch.randint(0, 2, (2, 3, 8, 8))
    target[:, :, 0] = IGNORE_INDEX
    assert torch.isfinite(loss(torch.randn(2, 3, 8, 8), target))
    assert "lovasz" in loss_options("ce+lovasz", weights)  # the Lovász-softmax of multiclass data takes them


def test_class_weights_reach_every_weighted_loss_term():
    options = loss_options("ce+dice", [0.5, 2.0])
    loss = build_loss("ce+dice", **options)
    assert sorted(loss.terms) == ["ce", "dice"]
    for term in loss.terms.values():
        assert torch.equal(term.class_weights, torch.tensor([0.5, 2.0]))
    assert loss_options("ce", None) == {}


def test_epochs_scale_with_dataset_size_within_bounds():
    assert planned_epochs(367, "cpu") == 14 and planned_epochs(367, "cuda") == 54
    assert planned_epochs(10, "cpu") == 300 and planned_epochs(100_000, "cuda") == 10


def test_cpu_batch_probe_measures_and_respects_the_memory_budget(shapes_data, monkeypatch):
    data = make_plan(shapes_data, batch_size=2, epochs=1, **TINY_MODEL).data
    config = load_config(None, **TINY_MODEL)
    batch, how = probe_batch_size(config, data, torch.device("cpu"))
    assert batch == 2 and "MiB per image" in how  # 16 training images: capped at an eighth
    monkeypatch.setattr(planning, "MAX_BATCH", 64)
    monkeypatch.setattr(planning, "CPU_BUDGET_BYTES", 1)  # nothing fits: still one image per step
    monkeypatch.setattr(data, "train_images", np.repeat(data.train_images, 8, axis=0))
    assert probe_batch_size(config, data, torch.device("cpu"))[0] == 1


def test_plan_yaml_round_trips_and_is_commented(shapes_data, tmp_path):
    plan = make_plan(shapes_data, weighting="median_frequency", **TINY_MODEL)
    path = write_plan(plan, tmp_path / "plan.yaml")
    text = path.read_text()
    assert text.startswith("# segwise plan") and "# batch size" in text and "# epochs" in text
    assert load_config(path) == plan.config
    data = plan.config.data
    assert data.classes == ["background", "disc", "rectangle", "triangle", "ring"]
    assert data.mode == "multiclass" and len(data.class_weights) == 5
    assert plan.config.train.size == [64, 64] and plan.config.train.batch_size == 2
    mean, std = plan.data.mean_std()
    assert data.mean == pytest.approx(mean, abs=1e-5) and data.std == pytest.approx(std, abs=1e-5)


def test_structured_overrides_plan_like_keyword_fields(shapes_data):
    keywords = make_plan(shapes_data, batch_size=2, epochs=1, **TINY_MODEL)
    structured = make_plan(
        shapes_data, overrides={"train": {"batch_size": 2, "epochs": 1}, "model": TINY_MODEL}
    )
    assert structured.config == keywords.config and structured.notes == keywords.notes
    both = make_plan(shapes_data, overrides={"train": {"batch_size": 2, "epochs": 3}}, epochs=1, **TINY_MODEL)
    assert both.config == keywords.config  # a keyword field wins over the same field in `overrides`


def test_pretrained_encoders_get_their_own_normalization(shapes_data, tmp_path):
    import timm
    from safetensors.torch import save_file

    weights = tmp_path / "test_resnet.safetensors"
    save_file(timm.create_model("test_resnet").state_dict(), str(weights))
    plan = make_plan(shapes_data, batch_size=2, epochs=1, encoder_weights=str(weights), **TINY_MODEL)
    assert plan.config.data.mean == [0.5, 0.5, 0.5]  # timm's test_resnet statistics, not the data's
    save_file(
        timm.create_model("test_resnet").state_dict(),
        str(weights),
        {"mean": "[0.4, 0.4, 0.4]", "std": "[0.2, 0.2, 0.2]"},
    )
    plan = make_plan(shapes_data, batch_size=2, epochs=1, encoder_weights=str(weights), **TINY_MODEL)
    assert plan.config.data.mean == [0.4, 0.4, 0.4]  # the file's own statistics win


def test_encoder_weights_auto_falls_back_to_scratch_offline_and_imagenet_stops(shapes_data):
    plan = make_plan(shapes_data, batch_size=2, epochs=1, **TINY_MODEL)  # tests run offline, caches empty
    assert plan.config.model.encoder_weights is None
    assert any(n.startswith("encoder weights: none, from scratch (cannot load ImageNet") for n in plan.notes)
    with pytest.raises(
        SegwiseError, match=r"encoder 'test_resnet': cannot load ImageNet weights .* HF_HUB_OFFLINE"
    ):
        make_plan(shapes_data, batch_size=2, epochs=1, encoder_weights="imagenet", **TINY_MODEL)
    none = make_plan(shapes_data, batch_size=2, epochs=1, encoder_weights="none", **TINY_MODEL)
    assert none.config.model.encoder_weights is None and not any("encoder weights" in n for n in none.notes)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"weighting": "loud"}, r"data\.weighting: 'loud' is not valid; expected none \| inverse"),
        ({"colour": 1}, r"data: unknown key\(s\) \['colour'\]"),
        ({"class_weights": [1.0, 2.0]}, r"data\.class_weights: 2 weights for 5 classes"),
        ({"classes": ["a", "b"]}, r"data\.classes: the plan names 2 classes but .* has 5"),
        ({"mode": "binary"}, r"data\.mode: the plan says binary but .* is multiclass"),
        ({"std": [0.0, 1.0, 1.0]}, r"data\.std: .* positive numbers"),
        ({"mean": [0.5], "std": [0.2]}, r"data\.mean: 1 values for images with 3 channel\(s\)"),
    ],
)
def test_edited_plans_are_validated_with_clear_messages(shapes_data, tmp_path, edit, message):
    plan = make_plan(shapes_data, batch_size=2, epochs=1, **TINY_MODEL)
    path = write_plan(plan, tmp_path / "plan.yaml")
    values = yaml.safe_load(path.read_text())
    values["data"].update(edit)
    path.write_text(yaml.safe_dump(values))
    with pytest.raises(SegwiseError, match=message):
        make_plan(shapes_data, path)


def test_renaming_classes_in_the_plan_renames_them(shapes_data, tmp_path):
    plan = make_plan(shapes_data, batch_size=2, epochs=1, **TINY_MODEL)
    path = write_plan(plan, tmp_path / "plan.yaml")
    values = yaml.safe_load(path.read_text())
    values["data"]["classes"] = ["bg", "a", "b", "c", "d"]
    path.write_text(yaml.safe_dump(values))
    assert make_plan(shapes_data, path).data.classes.names == ["bg", "a", "b", "c", "d"]


def test_training_uses_the_plan_and_records_class_weights(shapes_data, tmp_path):
    plan = make_plan(shapes_data, batch_size=4, epochs=1, weighting="inverse", **TINY_MODEL)
    path = write_plan(plan, tmp_path / "plan.yaml")
    run = segwise.train(shapes_data, path, runs_dir=tmp_path / "runs", progress=False).run_dir
    saved = RunConfig.load(run / "config.yaml")
    assert saved.data["plan"]["class_weights"] == plan.config.data.class_weights
    assert saved.train.batch_size == 4 and saved.preprocess.mean == plan.config.data.mean


def test_multilabel_training_uses_per_label_weights(tmp_path):
    data = write_multilabel_data(tmp_path / "data", count=10, size=32)
    plan = make_plan(data, batch_size=4, epochs=1, weighting="inverse", loss="bce+lovasz", **TINY_MODEL)
    assert plan.config.data.mode == "multilabel" and len(plan.config.data.class_weights) == 2
    assert any("lovasz term is unweighted" in note for note in plan.notes)
    path = write_plan(plan, tmp_path / "plan.yaml")
    run = segwise.train(data, path, runs_dir=tmp_path / "runs", progress=False).run_dir
    saved = RunConfig.load(run / "config.yaml")
    assert saved.data["plan"]["class_weights"] == plan.config.data.class_weights


def test_plan_cli_writes_a_plan_train_accepts(shapes_data, tmp_path):
    out = tmp_path / "plan.yaml"
    result = run_cli(
        "plan",
        str(shapes_data),
        "-o",
        str(out),
        "--encoder",
        "test_resnet",
        "--epochs",
        "1",
        "--device",
        "cpu",
    )
    assert result.returncode == 0, result.stderr
    assert "batch size" in result.stdout and out.is_file()
    assert load_config(out).train.epochs == 1
    bad = run_cli("plan", str(tmp_path / "nowhere"), "-o", str(out))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (the CPU probe is tested above)")
def test_gpu_batch_probe_doubles_until_the_cap_or_the_memory_budget(shapes_data):
    data = make_plan(shapes_data, batch_size=2, epochs=1, **TINY_MODEL).data
    batch, how = probe_batch_size(load_config(None, **TINY_MODEL), data, torch.device("cuda"))
    assert batch == 2 and "GPU memory" in how  # a tiny model at 64×64 fits up to the cap


def test_plan_keeps_the_layout_options_it_was_given(tmp_path):
    from .test_layouts import coco

    coco(tmp_path)
    plan = make_plan(tmp_path, categories=["dog", "cat"], batch_size=2, epochs=1, **TINY_MODEL)
    assert plan.config.data.layout == "coco" and plan.config.data.categories == ["dog", "cat"]
    assert plan.config.data.classes == ["background", "dog", "cat"]


@needs_shared
def test_isbi2012_plans_binary_one_channel_at_its_own_size():
    plan = make_plan(SHARED / "isbi2012", epochs=1, **TINY_MODEL)
    data = plan.config.data
    assert data.mode == "binary" and len(data.mean) == 1 and plan.config.train.size == [512, 512]
    assert plan.config.train.batch_size >= 1


def test_masks_with_an_up_and_a_down_get_horizontal_flips_only():
    rng = np.random.default_rng(0)
    scattered = rng.integers(0, 3, (6, 32, 48)).astype(np.uint8)  # cells: classes anywhere
    notes: list[str] = []
    assert planned_augment(_data(scattered, 3), notes) == "flips" and "every orientation" in notes[-1]
    street = scattered.copy()
    street[:, :12] = 1  # "sky" fills the top rows, and appears nowhere else
    street[:, 12:][street[:, 12:] == 1] = 2
    street[:, 12, :4] = IGNORE_INDEX
    assert planned_augment(_data(street, 3), notes) == "light"
    assert "c1 keeps to the top half (100% of its pixels)" in notes[-1]
    labels = np.zeros((4, 2, 32, 48), np.uint8)
    labels[:, 1, 20:] = 1  # per label: the second label only in the bottom half
    labels[:, 0, :, :10] = 1
    assert planned_augment(_data(labels, 2, multilabel=True), notes) == "light" and "bottom" in notes[-1]


def test_the_plan_chooses_augmentation_unless_it_is_given(shapes_data, tmp_path):
    plan = make_plan(shapes_data, epochs=1, **TINY_MODEL)
    assert plan.config.train.augment == "flips" and any(n.startswith("augment flips") for n in plan.notes)
    given = make_plan(shapes_data, epochs=1, augment="default", **TINY_MODEL)
    assert given.config.train.augment == "default" and not any(n.startswith("augment") for n in given.notes)
    path = tmp_path / "plan.yaml"
    config = given.config.updated({"train": {"augment": "heavy"}})
    write_plan(planning.Plan(config, given.data, [], None), path)
    assert make_plan(shapes_data, path).config.train.augment == "heavy"  # a config file's choice is kept
