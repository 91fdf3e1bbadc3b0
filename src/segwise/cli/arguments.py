"""What the command groups share: flags generated from the config fields, and the subcommand helper.

Every option is declared once, as a field in config.py (`option(default, help, check, flag)`). A field
with `flag=True` becomes `--kebab-name`, read by a parser chosen from its type hint; its help and
default come from the field; absent, the flag is None ("not given"). Parsed flags become structured
overrides `{"model": {...}, "train": {...}, "data": {...}}` for the library; the README's option table
is `options_markdown()`, checked by a test.

Light on purpose: `segwise --help` imports this module and config.py, never torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any

from ..config import SECTIONS, Config, choices
from ..constants import DEFAULT_MAX_PIXELS, MAX_PIXELS_ENV

RUN_HELP = "run folder written by `segwise train`"
ENSEMBLE_RUN_HELP = (
    "run folder written by `segwise train`, or the folder of `segwise train --folds K`: its folds "
    "predict as an ensemble"
)


def add_ensemble(parser: argparse.ArgumentParser) -> None:
    """--ensemble RUN (repeatable): more runs whose probabilities are averaged with RUN's."""
    parser.add_argument(
        "--ensemble",
        action="append",
        metavar="RUN2",
        help="another run (or folds folder) in the ensemble: the members' probabilities, each from its "
        "own preprocessing and TTA, are averaged; repeat for more; classes must agree",
    )


def runs_of(args: argparse.Namespace) -> str | list[str]:
    """RUN, or RUN and the --ensemble runs."""
    return [args.run, *args.ensemble] if args.ensemble else args.run


def is_rank_zero() -> bool:
    """False in every torchrun process but the first: those stay silent so a message prints once."""
    return int(os.environ.get("RANK", 0)) == 0


def add_command(
    commands: argparse._SubParsersAction,
    name: str,
    handler: Callable[[argparse.Namespace], int],
    *,
    help: str,
    description: str,
    examples: Iterable[str],
) -> argparse.ArgumentParser:
    """A subcommand whose --help ends with worked examples; `handler(args)` runs it and returns the exit code."""
    parser = commands.add_parser(
        name,
        help=help,
        description=description,
        epilog="example:\n" + "".join(f"  {line}\n" for line in examples),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(handler=handler, config_fields=())
    return parser


def add_max_pixels(parser: argparse.ArgumentParser) -> None:
    """--max-pixels: the one limit on the pixels of any image the command reads (`io.max_pixels`)."""
    parser.add_argument(
        "--max-pixels",
        type=_pixel_count,
        metavar="N",
        help=f"refuse images of more than N pixels, read from the file's header before decoding "
        f"(default {DEFAULT_MAX_PIXELS} = 16384²; also {MAX_PIXELS_ENV})",
    )


def add_no_postprocess(parser: argparse.ArgumentParser) -> None:
    """--no-postprocess: leave out the run's recorded post-processing (`inference.tuned`)."""
    parser.add_argument(
        "--no-postprocess",
        action="store_true",
        help="ignore the run's recorded post-processing (RUN/postprocess.json from `segwise "
        "tune-postprocess`, RUN/threshold.json from `eval --save-threshold`)",
    )


def apply_max_pixels(args: argparse.Namespace) -> None:
    """Make a given --max-pixels the limit of this process and of those it starts (data-loader
    workers), through the environment variable `io.max_pixels` reads."""
    if getattr(args, "max_pixels", None) is not None:
        os.environ[MAX_PIXELS_ENV] = str(args.max_pixels)


def _pixel_count(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r} is not a pixel count; give a positive integer")
    return int(text)


# ---- flags generated from the config fields -------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ConfigFlag:
    """One config field as a command-line flag."""

    section: str
    name: str
    hint: Any
    default: Any
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def choices(self) -> tuple[Any, ...] | None:
        return choices(self.hint)


def config_flags() -> dict[str, ConfigFlag]:
    """Every field declared with `flag=True`, by name, in section and field order."""
    found = {}
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for item in dataclasses.fields(cls):
            if item.metadata.get("flag"):
                default = (
                    item.default if item.default_factory is dataclasses.MISSING else item.default_factory()
                )
                found[item.name] = ConfigFlag(
                    section, item.name, hints[item.name], default, item.metadata["help"]
                )
    return found


def add_config_flags(
    parser: argparse.ArgumentParser,
    names: Iterable[str] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """Add the flags of the config fields `names` (default: all), one help group per config section.

    `defaults` replaces a field's default for a command that uses the value itself (`segwise show`
    draws with the `default` preset); without it a flag absent from the command line is None.
    """
    flags = config_flags()
    names = list(flags) if names is None else list(names)
    defaults = defaults or {}
    groups: dict[str, argparse._ArgumentGroup] = {}
    for name in names:
        spec = flags[name]
        if spec.section not in groups:
            groups[spec.section] = parser.add_argument_group(
                f"{spec.section} options (plan `{spec.section}:` keys)"
            )
        default = defaults.get(name, spec.default)
        groups[spec.section].add_argument(
            spec.flag,
            dest=name,
            default=defaults.get(name),
            help=_help(spec.help, default).replace("%", "%%"),  # argparse %-formats help strings
            **_reading(spec.hint),
        )
    parser.set_defaults(config_fields=tuple(names))


def overrides(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """The config flags given on the command line, per section; flags not given are left out."""
    return Config.sections_of(**{name: getattr(args, name) for name in args.config_fields})


def options_markdown() -> str:
    """The README's table of training options: every flag of `segwise train` generated from the config."""
    rows = ["| flag | plan key | default | what it does |", "| --- | --- | --- | --- |"]
    for spec in config_flags().values():
        allowed = f"; one of `{'`, `'.join(map(str, spec.choices))}`" if spec.choices else ""
        default = "—" if spec.default is None else f"`{_shown(spec.default)}`"
        what = (spec.help + allowed).replace("|", "\\|")
        rows.append(f"| `{spec.flag}` | `{spec.section}.{spec.name}` | {default} | {what} |")
    return "\n".join(rows) + "\n"


def _help(text: str, default: Any) -> str:
    """The field's help, then its default unless the help already says it (or there is none to show)."""
    if default is None or isinstance(default, bool) or "default" in text:
        return text
    return f"{text} (default: {_shown(default)})"


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


# ---- reading a flag's text as the field's type ----------------------------------------------------


def _size(text: str) -> list[int]:
    """'256' → [256, 256]; '192x384' → [192, 384] (height × width)."""
    parts = [int(part) for part in text.lower().split("x")]
    if len(parts) not in (1, 2):
        raise ValueError(text)
    return parts * 2 if len(parts) == 1 else parts


def _numbers(text: str) -> list[float]:
    return [float(part) for part in text.split(",")]


def _names(text: str) -> list[str]:
    return [name.strip() for name in text.split(",") if name.strip()]


# Type (without None) → how to read it, and what to call it in an error message.
_READERS: dict[Any, tuple[Callable[[str], Any], str]] = {
    int: (int, "an integer"),
    float: (float, "a number"),
    str: (str, "text"),
    list[int]: (_size, "a size H or HxW, e.g. 256 or 192x384"),
    list[float]: (_numbers, "comma-separated numbers, e.g. 0.5,1.0"),
    list[str]: (_names, "comma-separated names"),
}


def _reading(hint: Any) -> dict[str, Any]:
    """argparse keywords that read one flag as a value of type `hint`."""
    if hint is bool:
        return {"action": "store_true"}  # present: True; absent: None (not given)
    allowed = choices(hint)
    if allowed is not None:
        return {"choices": allowed}
    arms = [arm for arm in _arms(hint) if arm is not type(None)]
    if len(arms) == 1 and arms[0] in (int, float):  # argparse's own message for a malformed number
        return {"type": arms[0], "metavar": "N" if arms[0] is int else "X"}
    optional = len(arms) < len(_arms(hint))
    return {"type": _union_reader(arms, optional), "metavar": _metavar(arms)}


def _arms(hint: Any) -> tuple[Any, ...]:
    union = typing.get_origin(hint) in (typing.Union, types.UnionType)
    return typing.get_args(hint) if union else (hint,)


def _union_reader(arms: list[Any], optional: bool) -> Callable[[str], Any]:
    """The value of the first type that reads the text: `float | Literal["auto"]` takes 1e-3 or auto.
    A field that may be null reads `none` as null (not given)."""
    readers = []
    for arm in arms:
        allowed = choices(arm)
        if allowed is not None:
            readers.append((_choice_reader(allowed), " or ".join(map(str, allowed))))
        elif arm in _READERS:
            readers.append(_READERS[arm])
        # other arms (e.g. the dict form of `loss`) are written in a plan, not on the command line
    if not readers:
        raise TypeError(f"no command-line reader for {arms}; declare the field with flag=False")

    def read(text: str) -> Any:
        if optional and text.lower() == "none":
            return None
        for reader, _ in readers:
            try:
                return reader(text)
            except ValueError:
                continue
        raise argparse.ArgumentTypeError(f"'{text}' is not {' or '.join(what for _, what in readers)}")

    return read


def _choice_reader(allowed: tuple[Any, ...]) -> Callable[[str], Any]:
    def read(text: str) -> Any:
        if text not in allowed:
            raise ValueError(text)
        return text

    return read


def _metavar(arms: list[Any]) -> str | None:
    if list[int] in arms:
        return "H[xW]"
    if list[float] in arms or list[str] in arms:
        return "A,B,..."
    return None
