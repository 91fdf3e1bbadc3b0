"""Plans that fit a time budget (`--budget`), and a trainer that stops on time."""

import pytest
import yaml

import segwise
from segwise.config import TrainConfig
from segwise.engine.budget import (
    DEFAULT_BUDGET,
    TARGET_EPOCHS,
    TARGET_EPOCHS_PRETRAINED,
    Candidate,
    candidate_sides,
    choose,
    parse_budget,
)
from segwise.engine.plan import make_plan
from segwise.errors import SegwiseError

from .conftest import TINY, run_cli

TINY_MODEL = {"encoder": TINY["encoder"], "options": TINY["options"]}


@pytest.mark.parametrize(
    "text, seconds", [("20m", 1200), ("1h30m", 5400), ("90s", 90), ("1.5h", 5400), (" 2m 30s ", 150)]
)
def test_budgets_are_durations(text, seconds):
    assert parse_budget(text) == seconds


@pytest.mark.parametrize("text", ["20", "twenty minutes", "0m", "5m and a bit"])
def test_a_budget_that_is_no_duration_is_refused(text):
    with pytest.raises(SegwiseError, match=r"train.budget: .* (is not a duration|no time at all)"):
        parse_budget(text)


def test_the_config_refuses_a_budget_without_a_unit():
    with pytest.raises(SegwiseError, match=r"train.budget.*20m, 1h30m or 90s"):
        TrainConfig(budget="20")


def test_candidate_sides_keep_multiples_of_32_largest_first():
    assert candidate_sides(480) == [480, 352, 320, 256]
    assert candidate_sides(128) == [128]


def camvid_like(costs: dict[int, float], steps: int = 46) -> list[Candidate]:
    """Candidates by long side with the seconds of one epoch each."""
    return [Candidate(side, (side * 3 // 4, side), cost, steps) for side, cost in costs.items()]


def test_the_largest_resolution_that_still_buys_enough_epochs_wins():
    candidates = camvid_like({480: 100.0, 352: 50.0, 320: 38.0, 256: 25.0})
    chosen, epochs, why = choose(candidates, 1200.0, None)
    assert chosen.max_side == 320 and epochs == 31 and str(TARGET_EPOCHS) in why
    chosen, epochs, _ = choose(candidates, 6000.0, None)  # a longer budget buys the full size
    assert chosen.max_side == 480 and epochs == 60


def test_a_large_dataset_counts_steps_instead_of_epochs():
    candidates = camvid_like({480: 600.0, 320: 300.0}, steps=2000)
    chosen, epochs, _ = choose(candidates, 1200.0, None)
    assert chosen.max_side == 480 and epochs == 2  # 4 000 steps at the full size


def test_without_enough_time_the_smallest_size_and_a_short_budget_says_so():
    candidates = camvid_like({480: 100.0, 256: 50.0})
    chosen, epochs, why = choose(candidates, 600.0, None)
    assert chosen.max_side == 256 and epochs == 12 and "smallest" in why
    with pytest.raises(SegwiseError, match=r"one epoch at 192×256 takes about 50 s, more than the 30 s"):
        choose(candidates, 30.0, None)


def test_given_epochs_pick_the_largest_size_they_fit_in():
    candidates = camvid_like({480: 100.0, 352: 50.0, 256: 25.0})
    chosen, epochs, _ = choose(candidates, 1200.0, 20)
    assert chosen.max_side == 352 and epochs == 20


def test_a_budget_plan_times_the_candidates_and_records_the_budget(shapes_data):
    plan = make_plan(shapes_data, budget="10h", **TINY_MODEL)
    notes = "\n".join(plan.notes)
    assert "budget 10h:" in notes and "one epoch (batch 2, measured): 64×64" in notes
    assert plan.config.train.budget == "10h" and plan.config.train.batch_size == 2  # 16 images: an eighth
    assert plan.config.train.epochs == 300  # tiny data: the epoch cap, not the budget, ends it
    assert list(plan.config.train.size) == [64, 64]


def test_without_budget_or_epochs_the_plan_fits_the_default_budget(shapes_data):
    plan = make_plan(shapes_data, **TINY_MODEL)
    assert plan.config.train.budget == DEFAULT_BUDGET
    assert any(note.startswith(f"budget {DEFAULT_BUDGET}:") for note in plan.notes)
    given = make_plan(shapes_data, epochs=3, batch_size=2, **TINY_MODEL)  # epochs given: no timing
    assert given.config.train.budget is None and not any("budget" in note for note in given.notes)


def test_training_stops_when_the_budget_is_spent_and_a_resume_does_not_go_on(shapes_data, tmp_path):
    result = segwise.train(
        shapes_data,
        runs_dir=tmp_path,
        budget="1s",
        epochs=10_000,
        size=[64, 64],
        progress=False,
        **TINY,
    )
    assert 1 <= len(result.history) < 10_000
    recorded = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert recorded["train"]["budget"] == "1s"
    again = segwise.train(resume=result.run_dir, progress=False)
    assert len(again.history) == len(result.history)


def test_the_budget_flag_reaches_the_plan(shapes_data, tmp_path):
    out = tmp_path / "plan.yaml"
    done = run_cli(
        "plan", shapes_data, "-o", out, "--budget", "5m", "--encoder", TINY["encoder"], "--batch-size", "2"
    )
    assert done.returncode == 0, done.stderr
    text = out.read_text()
    assert "# budget 5m:" in text and yaml.safe_load(text)["train"]["budget"] == "5m"


def test_a_pretrained_encoder_spends_the_budget_on_resolution_sooner():
    candidates = camvid_like({480: 100.0, 352: 55.0, 320: 38.0, 256: 25.0})
    scratch, _, _ = choose(candidates, 1200.0, None)
    pretrained, epochs, why = choose(candidates, 1200.0, None, TARGET_EPOCHS_PRETRAINED)
    assert scratch.max_side == 320 and pretrained.max_side == 352 and epochs == 21
    assert str(TARGET_EPOCHS_PRETRAINED) in why


def test_a_budget_spent_in_the_last_epoch_is_not_called_early_stopping(shapes_data, tmp_path, capsys):
    result = segwise.train(shapes_data, runs_dir=tmp_path, budget="1s", epochs=1, size=[64, 64], **TINY)
    assert len(result.history) == 1
    said = capsys.readouterr()
    assert "epoch   1/1" in said.out + said.err and "early stopping" not in said.out + said.err
