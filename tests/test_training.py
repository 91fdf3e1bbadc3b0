import csv

import numpy as np
import torch
from safetensors.torch import load_file

import segwise
from segwise.config import RunConfig
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
    from segwise.engine.trainer import one_cycle

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
    from segwise.engine.trainer import Batches

    for count, batch_size in [(10, 4), (9, 4), (8, 4), (1, 4), (5, 1), (3, 8)]:
        images = np.zeros((count, 4, 4, 1), np.uint8)
        batches = Batches(
            images, np.zeros((count, 4, 4), np.uint8), batch_size, [0.0], [1.0], torch.device("cpu")
        )
        for drop_last in (True, False):
            sizes = [len(masks) for _, masks in batches.epoch(torch.Generator().manual_seed(0), drop_last)]
            assert len(sizes) == batches.batches_per_epoch(drop_last)
            assert sum(sizes) == count - (drop_last and count % batch_size == 1 and count > batch_size)
