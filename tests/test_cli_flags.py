"""The command-line flags are generated from the config fields: one declaration per option."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

from segwise import config
from segwise.cli import build_parser
from segwise.cli.arguments import config_flags, overrides

from .test_cli import _subparsers


def _flag_actions(parser) -> dict:
    return {action.dest: action for action in parser._actions if action.option_strings}


def _fields_with_flags() -> dict[str, tuple[str, dataclasses.Field]]:
    return {
        item.name: (section, item)
        for section, cls in config.SECTIONS.items()
        for item in dataclasses.fields(cls)
        if item.metadata["flag"]
    }


def test_train_has_one_flag_per_field_declared_with_one():
    actions = _flag_actions(_subparsers()["train"])
    fields = _fields_with_flags()
    assert set(fields) <= set(actions)
    for name in fields:
        assert actions[name].option_strings == ["--" + name.replace("_", "-")]
        assert actions[name].default is None  # absent = not given: the config (or the plan) decides
    unflagged = {f.name for cls in config.SECTIONS.values() for f in dataclasses.fields(cls)} - set(fields)
    assert unflagged and not unflagged & set(actions)  # e.g. class_weights, channels_last: plan-only


def test_choices_and_help_come_from_the_field():
    actions = _flag_actions(_subparsers()["train"])
    for name, (section, item) in _fields_with_flags().items():
        hint = typing.get_type_hints(config.SECTIONS[section])[name]
        expected = config.choices(hint)
        assert (tuple(actions[name].choices) if actions[name].choices else None) == expected, name
        assert actions[name].help.replace("%%", "%").startswith(item.metadata["help"]), name
    assert "(default: adamw)" in actions["optimizer"].help
    assert tuple(actions["weighting"].choices) == config.WEIGHTINGS


def test_no_hand_written_choice_lists_in_the_cli():
    sources = "".join(path.read_text() for path in Path(config.__file__).parent.joinpath("cli").glob("*.py"))
    for allowed in (config.OPTIMIZERS, config.SCHEDULES, config.MONITORS, config.PRECISIONS, config.WEIGHTINGS,
                    config.LAYOUTS, config.AUGMENT_PRESETS):  # fmt: skip
        rare = [value for value in allowed if value not in ("auto", "none", "default")]
        assert not [value for value in rare if f'"{value}"' in sources], allowed


def test_every_flag_type_becomes_a_structured_override(tmp_path):
    args = build_parser().parse_args(
        ["train", "data", "--arch", "fpn", "--encoder-weights", "none", "--epochs", "3", "--lr", "auto",
         "--size", "192x384", "--progressive-resize", "0.5,1.0", "--compile", "--optimizer", "sgd",
         "--ema-decay", "0.99", "--categories", "cat, dog", "--mask-threshold", "128", "--loss", "ce+lovasz"]
    )  # fmt: skip
    assert overrides(args) == {
        "model": {"arch": "fpn"},  # `none` for a nullable field is null: not given
        "train": {"epochs": 3, "lr": "auto", "loss": "ce+lovasz", "size": [192, 384], "optimizer": "sgd",
                  "ema_decay": 0.99, "progressive_resize": [0.5, 1.0], "compile": True},
        "data": {"categories": ["cat", "dog"], "mask_threshold": 128},
    }  # fmt: skip
    assert overrides(build_parser().parse_args(["train", "d", "--size", "256", "--lr", "3e-4"])) == {
        "train": {"size": [256, 256], "lr": 3e-4}
    }
    assert overrides(build_parser().parse_args(["train", "data"])) == {}  # nothing given, nothing overridden
    assert config.Config().updated(overrides(args)).train.size == [192, 384]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--size", "big"], "'big' is not a size H or HxW"),
        (["--lr", "fast"], "'fast' is not a number or auto"),
        (["--optimizer", "lion"], "invalid choice: 'lion'"),
        (["--progressive-resize", "half"], "'half' is not comma-separated numbers"),
    ],
)
def test_malformed_flags_are_usage_errors(flags, message, capsys):
    with pytest.raises(SystemExit) as exit:
        build_parser().parse_args(["train", "data", *flags])
    assert exit.value.code == 2 and message in capsys.readouterr().err


def test_out_of_range_values_fail_with_the_config_message(tmp_path):
    from .conftest import run_cli

    result = run_cli("train", str(tmp_path), "--size", "4")
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "train.size: [4, 4] is not valid; expected [height, width], each ≥ 8" in result.stderr
    shown = run_cli("show", str(tmp_path), "--size", "4")  # show validates its flags the same way
    assert shown.returncode == 2 and "train.size: [4, 4]" in shown.stderr


def test_other_commands_take_named_subsets_of_the_train_flags():
    train = _flag_actions(_subparsers()["train"])
    fields = config_flags()
    for command in ("plan", "lr-find", "check", "show"):
        parser = _subparsers()[command]
        actions = {dest: a for dest, a in _flag_actions(parser).items() if dest in fields}
        assert actions, command
        assert set(parser.get_default("config_fields")) == set(actions)
        for dest, action in actions.items():
            assert action.option_strings == train[dest].option_strings
            assert action.choices == train[dest].choices
    assert _subparsers()["show"].get_default("augment") == "default"  # show's own default draw
    assert "(default: default)" in _flag_actions(_subparsers()["show"])["augment"].help
