"""The LR range test: the suggestion lies where the loss falls, and the model comes back untouched."""

from __future__ import annotations

import numpy as np
import torch
import yaml

from segwise.config import RunConfig
from segwise.engine.lr_find import find_lr, suggest

from .conftest import TINY, run_cli


def test_suggested_lr_lies_where_the_loss_falls(shapes_data, tmp_path):
    finding = find_lr(shapes_data, output=tmp_path / "lr.png", steps=60, precision="fp32", **TINY)
    lrs, smoothed = np.asarray(finding.lrs), np.asarray(finding.smoothed)
    assert np.all(np.diff(lrs) > 0) and lrs[0] == 1e-7
    at = int(np.searchsorted(lrs, finding.suggestion))
    lowest = int(np.argmin(smoothed))
    # Between the flat start and the minimum, and on a falling stretch: lower a bit later than here.
    assert 0 < at < lowest
    assert smoothed[min(at + 3, lowest)] < smoothed[at] < smoothed[0]
    assert smoothed[lowest] < 0.8 * smoothed[0]  # the tiny problem does learn during the test
    assert (tmp_path / "lr.png").stat().st_size > 0


def test_suggestion_is_the_steepest_descent_before_the_minimum():
    lrs = list(np.logspace(-6, 0, 13))
    # Flat, a gentle then a steep fall ending at 1e-2.5, a minimum, then divergence (steeper still).
    losses = [2.0, 2.0, 2.0, 2.0, 1.9, 1.7, 1.0, 0.6, 0.5, 3.0, 9.0, 30.0, 90.0]
    assert suggest(lrs, losses) == lrs[6]


def test_range_test_restores_the_model_and_random_state(shapes_data):
    from segwise.config import TrainConfig
    from segwise.data import load_data
    from segwise.engine.batches import Batches
    from segwise.engine.lr_find import lr_range_test
    from segwise.engine.schedules import encoder_decoder_groups
    from segwise.losses import build_loss
    from segwise.models import create_model

    data = load_data(shapes_data)
    model = create_model("unet", encoder="test_resnet", num_classes=5, **TINY["options"])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = Batches(data.train_images, data.train_masks, 4, *data.mean_std(), torch.device("cpu"))
    rng = torch.get_rng_state()
    settings = TrainConfig(channels_last=False)
    groups = encoder_decoder_groups(model, 1.0)
    lr_range_test(model, batches, build_loss("ce"), groups, settings, None, steps=12)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert torch.equal(torch.get_rng_state(), rng)
    assert all(p.grad is None for p in model.parameters())


def test_range_test_runs_the_training_step(shapes_data, monkeypatch):
    from segwise.config import TrainConfig
    from segwise.data import load_data
    from segwise.engine.batches import Batches
    from segwise.engine.lr_find import lr_range_test
    from segwise.engine.schedules import encoder_decoder_groups
    from segwise.engine.step import Step
    from segwise.losses import build_loss
    from segwise.models import create_model

    calls = []
    original = Step.__call__

    def counting_step(self, net, x, masks, update=True):
        calls.append(update)
        return original(self, net, x, masks, update)

    monkeypatch.setattr(Step, "__call__", counting_step)
    data = load_data(shapes_data)
    model = create_model("unet", encoder="test_resnet", num_classes=5, **TINY["options"])
    batches = Batches(data.train_images, data.train_masks, 4, *data.mean_std(), torch.device("cpu"))
    groups = encoder_decoder_groups(model, 1.0)
    finding = lr_range_test(model, batches, build_loss("ce"), groups, TrainConfig(), None, steps=6)
    assert calls == [True] * len(finding.lrs) == [True] * 6  # one optimizer step per LR


def _tiny_plan(tmp_path):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"model": {"encoder": TINY["encoder"], "options": TINY["options"]}}))
    return str(plan)


def test_train_with_lr_auto_records_the_found_rate(shapes_data, tmp_path, capsys):
    import segwise

    result = segwise.train(shapes_data, runs_dir=tmp_path, epochs=1, lr="auto", precision="fp32", **TINY)
    assert "lr-find suggests lr" in capsys.readouterr().out
    lr = RunConfig.load(result.run_dir / "config.yaml").train.lr
    assert isinstance(lr, float) and 1e-7 < lr < 10
    assert result.history[0]["lr"] < lr  # the one-cycle schedule peaks at the found rate


def test_lr_find_command_writes_the_plot_and_prints_the_suggestion(shapes_data, tmp_path):
    out = tmp_path / "find.png"
    result = run_cli(
        "lr-find",
        str(shapes_data),
        "-c",
        _tiny_plan(tmp_path),
        "--steps",
        "30",
        "--precision",
        "fp32",
        "-o",
        str(out),
    )
    assert result.returncode == 0, result.stderr
    assert "suggested lr" in result.stdout and out.is_file()
    bad = run_cli("lr-find", str(tmp_path / "nowhere"))
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
