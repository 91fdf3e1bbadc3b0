"""Explicit answers for what discovery would otherwise work out: where the images and masks are, how a
mask file is named after its image, which mask set holds the labels and which one is a region of interest.

They come from the plan's `data:` section (`--images`, `--masks`, `--mask-pattern`, `--mask-set`,
`--roi` on the command line), so `train -c plan.yaml`, `check` and `eval` read the data the same way.

- `images` / `masks`: a folder, relative to the dataset folder (or absolute); `{split}` in it is replaced
  by every split word whose folder exists (`{split}/images` → train/images, test/images), or one
  folder per split as `train=training/images,val=test/images`. A folder given without a split takes the
  split its path names, like any folder discovery finds.
- `mask_pattern`: the mask's file name made from its image's: a template with `{stem}` (the image's file
  name without suffix) or `{id}` (the image name's first word: `21` of `21_training.tif`), such as
  `{stem}_mask.png` or `{id}_manual1.gif`; or a regular expression with a named group `stem` or `id`,
  such as `(?P<id>\\d+)_manual1\\.gif`. Matched against the mask's whole file name, or, for a pattern
  without a suffix, its name without one.
- `mask_set` / `roi`: the name of a mask set discovery offered (a folder such as `1st_manual`, or the
  suffix of masks kept beside their images such as `_1stHO`): the labels, and the region of interest
  whose outside is void for the loss and the metrics.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ..errors import SegwiseError

# Words naming a split, in folder and file names (discovery and the named layouts read them too)
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val"}
SPLIT_ALIASES |= {"test": "test", "testing": "test"}
SPLIT_FIELD = "{split}"
TEMPLATE_FIELDS = {"stem": r"(?P<stem>.+?)", "id": r"(?P<id>[^_\-. ]+)"}
ID_END = re.compile(r"[_\-. ]")


@dataclass(frozen=True)
class Overrides:
    """The explicit data options (module docstring); all None: discovery decides everything."""

    images: str | None = None
    masks: str | None = None
    mask_pattern: str | None = None
    mask_set: str | None = None
    roi: str | None = None

    @classmethod
    def of(cls, options: Any) -> Overrides:
        """The overrides of a `DataConfig` (or any object or dict with these fields)."""
        names = [f.name for f in fields(cls)]
        if isinstance(options, dict):
            return cls(**{name: options.get(name) for name in names})
        return cls(**{name: getattr(options, name, None) for name in names})

    def __bool__(self) -> bool:
        return any(getattr(self, f.name) is not None for f in fields(self))

    def image_folders(self, root: Path) -> dict[str, Path] | None:
        return folders_of(root, self.images, "images") if self.images else None

    def mask_folders(self, root: Path) -> dict[str, Path] | None:
        return folders_of(root, self.masks, "masks") if self.masks else None

    def pattern(self) -> MaskPattern | None:
        return MaskPattern(self.mask_pattern) if self.mask_pattern else None


def folders_of(root: Path, value: str, what: str) -> dict[str, Path]:
    """Split ("all" when the value names none) → existing folder, from an `images`/`masks` value."""
    if "=" in value:
        found = {}
        for item in value.split(","):
            split, _, folder = item.partition("=")
            split = split.strip()
            if split not in set(SPLIT_ALIASES.values()):
                raise SegwiseError(
                    f"--{what} {value!r}: {split!r} is not a split; write train=DIR,val=DIR,test=DIR"
                )
            found[split] = _existing(root, folder.strip(), what)
        return found
    if SPLIT_FIELD not in value:
        return {"all": _existing(root, value, what)}
    found = {
        split: root / value.replace(SPLIT_FIELD, word)
        for word, split in SPLIT_ALIASES.items()
        if (root / value.replace(SPLIT_FIELD, word)).is_dir()
    }
    if not found:
        raise SegwiseError(
            f"--{what} {value!r}: no folder under {root} fits it with {{split}} as train/training, "
            "val/valid/validation or test/testing; check the path"
        )
    return found


def _existing(root: Path, folder: str, what: str) -> Path:
    path = root / folder  # an absolute folder stays itself
    if not path.is_dir():
        raise SegwiseError(
            f"--{what} {folder!r}: {path} is not a folder; give a folder under {root} or an absolute one"
        )
    return path


class MaskPattern:
    """How a mask file is named after its image (module docstring): `key` reads the image's stem or ID
    out of a mask's file name, `image_key` gives the same for an image stem."""

    def __init__(self, text: str) -> None:
        self.text = text
        if any("{" + name + "}" in text for name in TEMPLATE_FIELDS):
            pieces = re.split(r"(\{stem\}|\{id\})", text)
            source = "".join(
                TEMPLATE_FIELDS[p[1:-1]] if p in ("{stem}", "{id}") else re.escape(p) for p in pieces
            )
        else:
            source = text
        try:
            self.regex = re.compile(source)
        except re.error as error:
            raise SegwiseError(
                f"--mask-pattern {text!r}: not a valid regular expression ({error}); fix it"
            ) from None
        groups = set(self.regex.groupindex) & set(TEMPLATE_FIELDS)
        if len(groups) != 1:
            raise SegwiseError(
                f"--mask-pattern {text!r}: needs exactly one of {{stem}} or {{id}} (in a regular expression, "
                "a group (?P<stem>...) or (?P<id>...)), e.g. '{stem}_mask.png'"
            )
        (self.group,) = groups

    def key(self, file_name: str) -> str | None:
        """The image stem (or ID) a mask file belongs to, None when the name does not fit."""
        found = self.regex.fullmatch(file_name) or self.regex.fullmatch(Path(file_name).stem)
        return found.group(self.group) if found else None

    def image_key(self, stem: str) -> str:
        return stem if self.group == "stem" else ID_END.split(stem, maxsplit=1)[0]

    def __str__(self) -> str:
        return f"--mask-pattern {self.text!r}"
