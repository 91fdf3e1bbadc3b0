"""`model.save_pretrained(folder)` and `segwise.load(folder)`: a model trained anywhere becomes a folder in
the model hubs' layout that predicts like a run; everything it reads is checked. No network."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

import segwise
from segwise.errors import SegwiseError
from segwise.io import read_mask

from .conftest import run_cli
from .test_predict_cli import binary_run, noise_image


def own_loop_model(seed: int = 0) -> segwise.models.SegmentationModel:
    """A model as someone's own training loop leaves it: built by create_model, then every parameter and
    batch-norm statistic moved away from its initial value (as training would, without the time)."""
    torch.manual_seed(seed)
    model = segwise.create_model(
        "unet", encoder="test_resnet", num_classes=3, decoder_channels=[16, 8, 8, 8, 8]
    )
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.add_(torch.rand_like(tensor) * 0.1)
    return model.eval()


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


def test_a_model_from_an_own_loop_predicts_after_save_and_load(tmp_path):
    model = own_loop_model()
    folder = model.save_pretrained(
        tmp_path / "cells",
        classes=["background", "cell", "edge"],
        preprocessing={"input_size": [48, 64], "mean": [0.5] * 3, "std": [0.25] * 3},
        metrics={"val_miou": 0.8125},
    )
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["library_name"] == "segwise" and config["task"] == "multiclass"
    assert config["model"] == model.config and config["stride"] == model.stride
    assert config["preprocess"] == {"input_size": [48, 64], "mean": [0.5] * 3, "std": [0.25] * 3}
    assert config["metrics"] == {"val_miou": 0.8125}
    card = (folder / "README.md").read_text()
    assert front_matter(card) == {"library_name": "segwise", "tags": ["image-segmentation", "segwise"]}
    assert "| index | class |\n| --- | --- |\n| 0 | background |\n| 1 | cell |\n| 2 | edge |\n" in card
    assert "| val_miou | 0.8125 |" in card and "48×64" in card

    predictor = segwise.load(folder, device="cpu")
    assert predictor.class_names == ["background", "cell", "edge"]
    x = torch.randn(1, 3, 40, 52)
    with torch.no_grad():
        assert torch.equal(predictor.model(x), model(x))  # the same architecture, options and weights
    image = np.random.default_rng(0).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    mask = predictor.predict(image)
    assert mask.shape == (50, 70) and mask.max() <= 2
    by_hand = segwise.Predictor(model, predictor.config, "cpu")  # the preprocessing it was given
    assert np.array_equal(mask, by_hand.predict(image))


def test_defaults_name_the_classes_and_use_imagenet_statistics(tmp_path):
    model = segwise.create_model("fpn", encoder="test_resnet", num_classes=2)
    folder = model.save_pretrained(tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    assert config["classes"]["names"] == ["background", "foreground"] and config["task"] == "binary"
    assert config["preprocess"]["input_size"] == [512, 512]
    assert config["preprocess"]["mean"] == [0.485, 0.456, 0.406]
    assert "None recorded." in (folder / "README.md").read_text()
    assert segwise.load(folder, device="cpu").predict(np.zeros((20, 30, 3), np.uint8)).shape == (20, 30)


def test_mistakes_in_what_is_passed_name_the_fix(tmp_path):
    model = segwise.create_model("unet", encoder="test_resnet", num_classes=3, in_channels=1)
    with pytest.raises(SegwiseError, match=r"classes: 2 names for a model with 3 outputs"):
        model.save_pretrained(tmp_path / "a", classes=["a", "b"], preprocessing={"mean": [0.5], "std": [0.2]})
    with pytest.raises(SegwiseError, match=r"preprocessing: mean and std missing.*per input channel \(1\)"):
        model.save_pretrained(tmp_path / "b")  # ImageNet's statistics are RGB's
    with pytest.raises(SegwiseError, match=r"preprocessing: preprocess.std: \[0.5, 0.5\] is not valid"):
        model.save_pretrained(tmp_path / "c", preprocessing={"mean": [0.5], "std": [0.5, 0.5]})
    with pytest.raises(SegwiseError, match=r"metrics: 'miou' is not a name with a finite number"):
        model.save_pretrained(
            tmp_path / "d", preprocessing={"mean": [0.5], "std": [0.2]}, metrics={"miou": float("nan")}
        )
    with pytest.raises(SegwiseError, match=r"needs a model made by segwise.create_model"):
        segwise.models.SegmentationModel.save_pretrained(torch.nn.Conv2d(1, 1, 1), tmp_path / "e")
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a folder


def test_a_folder_that_is_not_an_earlier_save_is_left_alone(tmp_path):
    model = own_loop_model()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "README.md").write_text("my notes")
    with pytest.raises(SegwiseError, match=r"photos: not empty and not a folder save_pretrained wrote"):
        model.save_pretrained(other)
    assert [p.name for p in other.iterdir()] == ["README.md"] and (
        other / "README.md"
    ).read_text() == "my notes"
    # An earlier save is replaced, files of others in it (a hub clone's .gitattributes) kept.
    folder = model.save_pretrained(tmp_path / "m", classes=["a", "b", "c"])
    (folder / ".gitattributes").write_text("*.safetensors filter=lfs\n")
    retrained = own_loop_model(seed=1)
    retrained.save_pretrained(folder, classes=["x", "y", "z"])
    assert segwise.load(folder, device="cpu").class_names == ["x", "y", "z"]
    assert (folder / ".gitattributes").is_file()


def test_weights_that_are_not_the_configs_are_refused(tmp_path, capsys):
    first = own_loop_model().save_pretrained(tmp_path / "first")
    second = own_loop_model(seed=1).save_pretrained(tmp_path / "second")
    shutil.copy(second / "model.safetensors", first / "model.safetensors")  # as a torn re-save leaves it
    with pytest.raises(
        SegwiseError, match=r"first/model.safetensors: not the weights .*config.json was written"
    ):
        segwise.load(first)
    result = run_cli("predict", first, noise_image(tmp_path / "in" / "a.png"), "-o", tmp_path / "out")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "save the model again" in result.stderr and "Traceback" not in result.stderr


def test_a_foreign_or_edited_config_json_is_refused_naming_the_key(tmp_path):
    folder = own_loop_model().save_pretrained(tmp_path / "m")
    path = folder / "config.json"
    values = json.loads(path.read_text())
    path.write_text(json.dumps({**values, "library_name": "transformers"}))
    with pytest.raises(SegwiseError, match=r"config.json: not a segwise model \(library_name 'transformers'"):
        segwise.load(folder)
    path.write_text(json.dumps({**values, "model": {**values["model"], "num_classes": 4}}))
    with pytest.raises(SegwiseError, match=r"config.json: model.num_classes: 4 is not valid"):
        segwise.load(folder)
    path.write_text(json.dumps({**values, "model": {**values["model"], "arch": "os.system"}}))
    with pytest.raises(SegwiseError, match=r"config.json: unknown architecture 'os.system'"):
        segwise.load(folder)
    path.write_text(json.dumps({**values, "classes": {**values["classes"], "names": ["a\x1b[2J", "b", "c"]}}))
    with pytest.raises(SegwiseError, match=r"config.json: .*control character"):
        segwise.load(folder)
    path.write_text("{not json")
    with pytest.raises(SegwiseError, match=r"config.json: not valid JSON"):
        segwise.load(folder)


def test_a_finished_run_exports_as_a_folder_that_predicts_like_the_run(trained_run, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    (run / "eval" / "val").mkdir(parents=True)
    (run / "eval" / "val" / "metrics.json").write_text(json.dumps({"overall": {"mean_iou": 0.75, "x": None}}))
    result = run_cli("export", run, "--format", "pretrained", "-o", tmp_path / "hub")
    assert result.returncode == 0, result.stderr
    assert f"wrote {tmp_path / 'hub'}" in result.stdout
    assert json.loads((tmp_path / "hub" / "config.json").read_text())["metrics"] == {"val/mean_iou": 0.75}
    assert "| val/mean_iou | 0.75 |" in (tmp_path / "hub" / "README.md").read_text()
    image = np.random.default_rng(1).integers(0, 255, (45, 61, 3), dtype=np.uint8)
    from_run, from_folder = segwise.load(run, device="cpu"), segwise.load(tmp_path / "hub", device="cpu")
    assert from_folder.class_names == from_run.class_names
    assert np.array_equal(from_folder.predict_proba(image), from_run.predict_proba(image))
    again = from_folder.save_pretrained(tmp_path / "copy")  # a loaded folder saves with its own metrics
    assert json.loads((again / "config.json").read_text())["metrics"] == {"val/mean_iou": 0.75}


def test_a_binary_runs_saved_threshold_travels_with_it(tmp_path):
    run = binary_run(tmp_path, foreground_logit=0.4, threshold=0.7)  # P(cell) = 0.599 everywhere
    folder = segwise.load(run, device="cpu").save_pretrained(tmp_path / "hub")
    image = noise_image(tmp_path / "in" / "a.png")
    report = segwise.load(folder, device="cpu").predict_to_folder([image], tmp_path / "out")
    assert report.threshold == 0.7 and not read_mask(tmp_path / "out" / "a.png").any()
    # Saved again from a model without one, the old threshold goes: it is not this model's.
    segwise.load(folder, device="cpu").model.save_pretrained(folder, classes=["background", "cell"])
    assert not (folder / "threshold.json").exists()
