import csv

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import segwise
from segwise.config import RunConfig
from segwise.errors import SegwiseError
from segwise.run import load_model

from .conftest import TINY


def test_a_few_epochs_lower_the_loss(shapes_data, tmp_path):
    result = segwise.train(shapes_data, runs_dir=tmp_path, epochs=4, lr=3e-3, progress=False, **TINY)
    losses = [row["train_loss"] for row in result.history]
    assert losses[-1] < 0.8 * losses[0]
    assert 0.0 <= result.best_miou <= 1.0 and result.best_epoch in (1, 2, 3, 4)


def test_run_folder_holds_config_weights_metrics_curves_and_samples(trained_run):
    names = {path.name for path in trained_run.iterdir()}
    assert {
        "config.yaml",
        "model.safetensors",
        "last.pt",
        "metrics.csv",
        "curves.png",
        "lr.png",
        "val_samples",
    } <= names
    config = RunConfig.load(trained_run / "config.yaml")
    assert config.classes.names[0] == "background" and config.model["num_classes"] == 5
    with open(trained_run / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [int(row["epoch"]) for row in rows] == [1, 2]
    assert all(0 <= float(row["val_miou"]) <= 1 for row in rows)
    assert len(list((trained_run / "val_samples").glob("*.png"))) == 4
    checkpoint = torch.load(trained_run / "last.pt", weights_only=True)  # no pickled code inside
    assert checkpoint["epoch"] == 2 and "optimizer" in checkpoint


def test_saved_run_predicts_exactly_like_the_trained_weights(shapes_data, tmp_path):
    """save → load → identical predictions: the safetensors round trip against the in-memory state."""
    run_dir = segwise.train(shapes_data, runs_dir=tmp_path, epochs=1, progress=False, **TINY).run_dir
    trained_state = torch.load(run_dir / "last.pt", weights_only=True)[
        "model"
    ]  # best == last after one epoch
    saved_state = load_file(str(run_dir / "model.safetensors"))
    assert all(torch.equal(trained_state[key], saved_state[key]) for key in trained_state)

    predictor = segwise.load(run_dir)
    model, config = load_model(run_dir)
    model.load_state_dict(trained_state)
    image = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float()
    mean = torch.tensor(config.preprocess.mean).view(1, -1, 1, 1) * 255
    std = torch.tensor(config.preprocess.std).view(1, -1, 1, 1) * 255
    with torch.no_grad():
        expected = model.eval()((x - mean) / std).argmax(1)[0].numpy()
    assert np.array_equal(predictor.predict(image), expected)
    assert np.array_equal(segwise.load(run_dir).predict(image), predictor.predict(image))


def test_prediction_keeps_the_input_size(trained_run):
    predictor = segwise.load(trained_run)
    mask = predictor.predict(np.zeros((250, 333, 3), np.uint8))
    assert mask.shape == (250, 333) and mask.max() < 5
    assert predictor.predict_proba(np.zeros((20, 30), np.uint8)).shape == (
        5,
        20,
        30,
    )  # gray input → RGB model


def test_training_twice_under_one_name_never_overwrites(shapes_data, tmp_path):
    first = segwise.train(shapes_data, runs_dir=tmp_path, name="same", epochs=1, progress=False, **TINY)
    weights_before = (first.run_dir / "model.safetensors").read_bytes()
    second = segwise.train(
        shapes_data, runs_dir=tmp_path, name="same", epochs=1, seed=1, progress=False, **TINY
    )
    assert first.run_dir.name == "same" and second.run_dir.name == "same-2"
    assert (first.run_dir / "model.safetensors").read_bytes() == weights_before


def test_one_cycle_schedule_survives_runs_of_any_length():
    from segwise.engine.schedules import one_cycle

    for total_steps in range(1, 12):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1e-3)
        scheduler = one_cycle(optimizer, 1e-3, total_steps)
        rates = []
        for _ in range(total_steps):
            optimizer.step()
            scheduler.step()
            rates.append(scheduler.get_last_lr()[0])
        assert all(0 < rate <= 1e-3 + 1e-12 for rate in rates)


def test_every_batch_of_an_epoch_is_yielded_and_counted():
    from segwise.engine.batches import Batches

    for count, batch_size in [(10, 4), (9, 4), (8, 4), (1, 4), (5, 1), (3, 8)]:
        images = np.zeros((count, 4, 4, 1), np.uint8)
        batches = Batches(
            images, np.zeros((count, 4, 4), np.uint8), batch_size, [0.0], [1.0], torch.device("cpu")
        )
        for drop_last in (True, False):
            sizes = [len(masks) for _, masks in batches.epoch(torch.Generator().manual_seed(0), drop_last)]
            assert len(sizes) == batches.batches_per_epoch(drop_last)
            assert sum(sizes) == count - (drop_last and count % batch_size == 1 and count > batch_size)


class _ScriptedMatrix:
    def __init__(self, miou: float) -> None:
        self.miou = miou

    def mean_iou(self) -> float:
        return self.miou

    def pixel_accuracy(self) -> float:
        return self.miou


def _scripted_validation(monkeypatch, losses: list[float], mious: list[float]) -> None:
    """Validation returns these values epoch by epoch, so the monitor's course is known in advance."""
    from segwise.engine import trainer

    scripted = iter(zip(losses, mious, strict=True))

    def fake_evaluate(*args, **kwargs):
        loss, miou = next(scripted)
        return loss, _ScriptedMatrix(miou)

    monkeypatch.setattr(trainer, "validate", fake_evaluate)


def test_early_stopping_stops_after_patience_epochs_without_a_min_delta_improvement(
    shapes_data, tmp_path, monkeypatch
):
    # val_loss: epoch 2 improves by 0.1 (> min_delta), epochs 3 and 4 by less than 0.05: stop after 4.
    _scripted_validation(monkeypatch, [1.0, 0.9, 0.88, 0.87, 0.1, 0.1], [0.1] * 6)
    result = segwise.train(
        shapes_data,
        runs_dir=tmp_path,
        epochs=6,
        monitor="val_loss",
        patience=2,
        min_delta=0.05,
        progress=False,
        **TINY,
    )
    assert [row["epoch"] for row in result.history] == [1, 2, 3, 4]
    assert result.best_epoch == 2
    state = torch.load(result.run_dir / "last.pt", weights_only=True)
    assert state["stopped"] and state["best_epoch"] == 2 and state["epoch"] == 4


def test_best_weights_follow_the_monitor_in_max_mode(shapes_data, tmp_path, monkeypatch):
    _scripted_validation(monkeypatch, [1.0, 1.0, 1.0], [0.2, 0.5, 0.4])
    result = segwise.train(shapes_data, runs_dir=tmp_path, epochs=3, patience=5, progress=False, **TINY)
    assert len(result.history) == 3 and result.best_epoch == 2 and result.best_miou == 0.5
    assert torch.load(result.run_dir / "last.pt", weights_only=True)["best_epoch"] == 2


def test_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    shapes_data, tmp_path, monkeypatch
):
    from segwise.engine import plan
    from segwise.errors import SegwiseError
    from segwise.losses import build_loss

    calls = [0]

    class Exploding(torch.nn.Module):  # a module, as the trainer moves the loss to its device
        def __init__(self, loss):
            super().__init__()
            self.loss = loss

        def forward(self, logits, masks):
            calls[0] += torch.is_grad_enabled()
            value = self.loss(logits, masks)
            return value * float("nan") if calls[0] > 5 else value  # 4 steps an epoch: NaN in epoch 2

    def exploding_loss(spec, **options):
        return Exploding(build_loss(spec, **options))

    monkeypatch.setattr(plan, "build_loss", exploding_loss)
    with pytest.raises(SegwiseError, match="loss became nan at epoch 2.*last good epoch \\(1\\)"):
        segwise.train(shapes_data, runs_dir=tmp_path, name="nan", epochs=3, progress=False, **TINY)
    run_dir = tmp_path / "nan"
    state = torch.load(run_dir / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and all(
        torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point()
    )
    assert len(load_file(str(run_dir / "model.safetensors"))) > 0
    with open(run_dir / "metrics.csv") as handle:
        assert [row["epoch"] for row in csv.DictReader(handle)] == ["1"]


def test_frozen_encoder_stays_unchanged_and_trains_after_unfreezing(shapes_data, tmp_path):
    from segwise.models import create_model

    torch.manual_seed(0)  # the trainer seeds the same way before building its model
    initial = create_model("unet", encoder="test_resnet", num_classes=5, **TINY["options"]).state_dict()
    for epochs, encoder_moves in ((1, False), (2, True)):
        run_dir = segwise.train(
            shapes_data, runs_dir=tmp_path, epochs=epochs, freeze_encoder_epochs=1, progress=False, **TINY
        ).run_dir
        trained = torch.load(run_dir / "last.pt", weights_only=True)["model"]
        encoder_same = all(torch.equal(trained[k], initial[k]) for k in initial if k.startswith("encoder."))
        decoder_same = all(torch.equal(trained[k], initial[k]) for k in initial if k.startswith("decoder."))
        assert encoder_same != encoder_moves and not decoder_same  # BN statistics included


def test_every_option_together_trains_and_is_recorded(shapes_data, tmp_path):
    options = {
        "optimizer": "sgd",
        "schedule": "cosine",
        "warmup_epochs": 0.5,
        "encoder_lr_scale": 0.1,
        "clip_grad_norm": 1.0,
        "accumulate": 2,
        "ema_decay": 0.5,
        "progressive_resize": [0.5, 1.0],
        "tensorboard": True,
    }
    result = segwise.train(
        shapes_data, runs_dir=tmp_path, epochs=2, lr=0.01, progress=False, **TINY, **options
    )
    assert all(np.isfinite(row["train_loss"]) for row in result.history)
    state = torch.load(result.run_dir / "last.pt", weights_only=True)
    assert state["step"] == 2 * 2  # 4 batches an epoch, 2 per optimizer step
    groups = state["optimizer"][
        "param_groups"
    ]  # encoder, its biases and norms, decoder, its biases and norms
    decoder_lr = groups[2]["lr"]
    assert [group["lr"] for group in groups] == pytest.approx([0.1 * decoder_lr] * 2 + [decoder_lr] * 2)
    assert [group["weight_decay"] for group in groups] == [1e-4, 0.0, 1e-4, 0.0]
    saved = load_file(str(result.run_dir / "model.safetensors"))  # the EMA weights are what is kept
    ema = {k.removeprefix("module."): v for k, v in state["ema"].items() if k != "n_averaged"}
    if result.best_epoch == 2:
        assert all(torch.equal(saved[k], ema[k]) for k in saved)
    assert any((result.run_dir / "tensorboard").iterdir())
    recorded = RunConfig.load(result.run_dir / "config.yaml").train
    assert {key: getattr(recorded, key) for key in options} == options


def test_schedules_warm_up_decay_and_keep_the_encoder_share():
    from segwise.engine.schedules import build_optimizer, build_scheduler

    for name in ("one_cycle", "cosine", "poly"):
        encoder, decoder = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
        groups = [{"params": [encoder], "lr_scale": 0.1}, {"params": [decoder], "lr_scale": 1.0}]
        optimizer = build_optimizer(groups, "adamw", 1e-2, 0.0)
        scheduler = build_scheduler(optimizer, name, 1e-2, total_steps=20, warmup_steps=4)
        rates = []
        for _ in range(20):
            rates.append([group["lr"] for group in optimizer.param_groups])
            optimizer.step()
            scheduler.step()
        encoder_rates, decoder_rates = np.array(rates).T
        assert np.allclose(encoder_rates, 0.1 * decoder_rates)
        peak = int(np.argmax(decoder_rates))
        assert 0 < peak < 10 and decoder_rates.max() == pytest.approx(1e-2, rel=0.05), name
        assert np.all(np.diff(decoder_rates[: peak + 1]) > 0) and np.all(np.diff(decoder_rates[peak:]) <= 0)
        assert decoder_rates[-1] < 0.1 * decoder_rates.max()


def test_progressive_resizing_shrinks_images_and_masks_together():
    from segwise.config import TrainConfig
    from segwise.engine.batches import resize_batch
    from segwise.engine.trainer import resize_fraction

    settings = TrainConfig(epochs=5, progressive_resize=[0.5, 1.0])
    assert [resize_fraction(settings, epoch) for epoch in range(1, 6)] == [0.5, 0.5, 0.5, 1.0, 1.0]
    images = torch.rand(2, 3, 64, 48) * 255
    masks = torch.randint(0, 3, (2, 64, 48))
    masks[:, :4] = 255
    small_images, small_masks = resize_batch(images, masks, 0.5)
    assert small_images.shape == (2, 3, 32, 24) and small_masks.shape == (2, 32, 24)
    assert set(small_masks.unique().tolist()) <= {0, 1, 2, 255} and small_masks.dtype == torch.long


@pytest.mark.parametrize(
    "key, value, hint",
    [
        ("optimizer", "rmsprop", "adamw | sgd | adam"),
        ("schedule", "step", "one_cycle | cosine | poly"),
        ("freeze_encoder_epochs", 40, "between 0 and train.epochs"),
        ("accumulate", 0, "≥ 1"),
        ("ema_decay", 1.5, "between 0 and 1"),
        ("progressive_resize", [0.0, 1.0], "fractions in (0, 1]"),
        ("monitor", "val_dice", "val_miou | val_loss"),
        ("patience", 0, "≥ 1"),
        ("lr", "fast", "positive number or auto"),
    ],
)
def test_invalid_training_options_fail_with_the_key_and_the_fix(key, value, hint):
    from segwise.config import load_config
    from segwise.errors import SegwiseError

    with pytest.raises(
        SegwiseError, match=f"train.{key}.*{hint}".replace("|", "\\|").replace("(", "\\(").replace(")", "\\)")
    ):
        load_config(**{key: value})


def test_learning_rate_from_yaml_text_is_a_number():
    from segwise.config import TrainConfig

    assert TrainConfig(lr="1e-3").lr == 1e-3 and TrainConfig(lr="auto").lr == "auto"


def test_tensorboard_without_its_package_fails_in_one_line_before_any_run_folder(
    shapes_data, tmp_path, monkeypatch
):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *args: None if name == "tensorboard" else find_spec(name, *args),
    )
    with pytest.raises(SegwiseError, match=r"segwise\[tensorboard\]"):
        segwise.train(
            shapes_data, runs_dir=tmp_path / "runs", epochs=1, tensorboard=True, progress=False, **TINY
        )
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())


KEEP_FREED = """
import resource, sys, torch
from segwise.engine.devices import keep_freed_memory
if not keep_freed_memory():
    print("unsupported"); sys.exit(0)
size = 48 << 20
for _ in range(2):  # the first ones may grow the heap
    torch.empty(size, dtype=torch.uint8).fill_(1)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    torch.empty(size, dtype=torch.uint8).fill_(1)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_keep_freed_memory_lets_large_tensors_reuse_their_pages():
    """Counted page faults, not time: without the setting every 48 MB tensor is a fresh mapping
    (12,288 faults of 4 KiB each); with it the freed block is reused. Measured in a fresh process:
    whether the heap can grow in place depends on what earlier tests left mapped above it."""
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", KEEP_FREED], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    if result.stdout.strip() == "unsupported":
        pytest.skip("glibc's mallopt is not available on this platform")
    fresh = (48 << 20) // 4096
    assert int(result.stdout.split()[-1]) < 2 * fresh  # not 8 × fresh


def test_importing_the_engine_draws_in_no_plotting_library():
    import subprocess
    import sys

    code = "import sys, segwise.engine.trainer, segwise.engine.lr_find; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"  # matplotlib loads with the first figure a run draws
