"""Discovery of image/mask pairs in a tree that no known layout describes (layout "tree").

Runs only after every named layout has failed. It finds, anywhere under the root:

- image folders and mask folders. A folder holds masks when its name says so (masks, labels, gt,
  annotations, *annot, *_labels, *_manual*, groundtruth, segmentation, figure_ground, ...) or when a few
  sampled files look like masks (palette or 1-bit images, few distinct values or colours). A folder may
  also hold images and masks side by side, the masks named with a suffix shared by all of them
  (`Image_01L.jpg` ↔ `Image_01L_1stHO.png`);
- the split of each folder, from any level of its path (train/training, val/valid/validation, test/testing);
- a class-name or colour-table file (class_dict.csv, classes.txt, codes.txt, and labelmap.txt or
  labels.txt when they read as one name a line), when the tree holds exactly one.

Images pair with masks by file stem under ONE rule per folder, tried in order: the same stem; the mask
stem is the image stem plus a suffix (or prefix) found in the data (`x` ↔ `x_mask`, `x_L`,
`x_segmentation`); the image stem is the mask stem plus a suffix; both sets differ by their common
prefix/suffix (`21_training` ↔ `21_manual1`); they share a leading ID containing a digit. A rule pairs
one image with one mask, never by position or sort order, and counts only if it pairs at least
COVERAGE of the folder's images (the others become "image without a mask" problems). Where several
mask sets fit the same images, labels-named sets beat a plain `mask` set, a first annotator beats a
second, and a set whose masks are one large region per image is a region of interest, not labels; a
tie is an error naming the choices and the flag that settles it. Every choice is recorded in
`Discovery.decisions` so that `segwise check` can print it.

The explicit overrides (overrides.py) replace a step each: --images / --masks the folders found,
--mask-pattern the rules (only the files fitting it are masks, and any share of images may pair),
--mask-set the choice among mask sets, and --roi takes a set as the region of interest of its images.
"""

from __future__ import annotations

import bisect
import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import SegwiseError
from ..io import IMAGE_SUFFIXES, open_image, read_mask
from .overrides import SPLIT_ALIASES, MaskPattern, Overrides

MASK_ONLY_SUFFIXES = (".gif",)  # masks only: GIF is lossless but never a training image
# Folder and file words naming a split, and the class-name files, shared with the named layouts (formats.py)
LABEL_WORDS = {"label", "labels", "gt", "groundtruth", "manual", "annotation", "annotations", "annot", "ann"}
LABEL_WORDS |= {"segmentation", "segmentations", "seg", "truth", "target", "targets", "trimaps"}
LABEL_NAMES = ("figure_ground", "ground_truth", "figure-ground", "ground-truth")
MASK_WORDS = {"mask", "masks"}
IMAGE_WORDS = {"image", "images", "img", "imgs", "jpegimages"}  # only to recognise a dataset's folders
CLASS_FILES = ("class_dict.csv", "classes.txt", "codes.txt")
LOOSE_CLASS_FILES = ("labelmap.txt", "labels.txt")  # used only when they read as names
LABELMAP_LINE = r"[^:#]+:\s*\d+\s*,\s*\d+\s*,\s*\d+\s*:.*"  # CVAT: name:r,g,b:parts:actions
SEPARATORS = "_-. "
SKIPPED_DIRS = {"__MACOSX"}  # resource forks that macOS adds to zip files
SAMPLES = 3
FEW_VALUES = 64  # a mask holds at most this many distinct values or colours
COVERAGE = 0.9  # a rule found in the data must pair this share of a folder's images (the rest: problems)
REGION_SHARE = 0.5  # a binary mask whose foreground covers this much of every sample is a region of interest
Pair = tuple[Path, Path]


@dataclass
class Folder:
    """A folder of the tree holding image files: files by stem, its split, and whether it holds masks."""

    path: Path
    files: dict[str, Path]
    split: str | None
    label_score: int  # 2: named like labels, 1: named mask(s), 0: not named like masks
    masks: bool
    notes: list[str] = field(default_factory=list)  # how its masks were chosen


@dataclass
class MaskSet:
    """Masks that pair with the images of an image folder under one rule."""

    name: str  # the folder (relative to the root), or the suffix of masks kept beside their images
    rule: str
    by_stem: dict[str, Path]  # image stem → mask
    label_score: int
    pool: list[Path] = field(default_factory=list)  # every mask file of its folder the rule could read
    region: bool = False
    coverage: float = 1.0  # the share of the folder's images it pairs
    flag: str = ""  # how --mask-set and --roi name it: its folder's name or its suffix

    @property
    def annotator(self) -> int:
        """1 for a first annotator (1st, first, annotator1), 2 for a second, ...; 1 when unsaid."""
        text = self.name.lower()
        words = {"first": 1, "second": 2, "third": 3}
        found = re.search(
            r"(\d+)(?:st|nd|rd|th)|(first|second|third)|(?:manual|annotator|observer|rater|grader|expert)"
            r"[_\- ]?(\d+)",
            text,
        )
        if not found:
            return 1
        number, word, trailing = found.groups()
        return int(number or trailing) if (number or trailing) else words[word]

    def is_named(self, name: str) -> bool:
        """`name` (from --mask-set or --roi) is this set's folder name, its path or its suffix."""
        name = name.strip().rstrip("/")
        return name in (self.flag, self.flag.lstrip(SEPARATORS), self.name.rstrip("/"))


@dataclass
class Discovery:
    """What discovery decided: pairs per split, the class-name file, masks pairing no image, images no
    mask pairs with, each image's region of interest (--roi), and why."""

    pairs: dict[str, list[Pair]]
    class_file: Path | None
    unmatched: list[Path]
    decisions: list[str]
    unpaired: list[Path] = field(default_factory=list)
    roi: dict[Path, Path] = field(default_factory=dict)


def discover(root: Path, overrides: Overrides | None = None) -> Discovery | None:
    """Pairs of the tree under `root` (see the module docstring), following `overrides` where given;
    None when it holds no images and masks."""
    overrides = overrides or Overrides()
    pattern = overrides.pattern()
    folders = _scan(root, overrides, pattern)
    images = [f for f in folders if not f.masks]
    masks = [f for f in folders if f.masks]
    if not images:
        return None
    chosen: list[tuple[Folder, MaskSet]] = []
    roi: dict[Path, Path] = {}
    for folder in images:
        image_files, candidates = _candidates(root, folder, masks, pattern)
        if candidates and overrides.roi:
            region, candidates = _take_named(root, folder, candidates, overrides.roi, "--roi")
            roi |= {image_files[stem]: mask for stem, mask in region.by_stem.items()}
            folder.notes.append(
                f"images {_relative(root, folder.path)}: region of interest from {region.name} ({region.rule}); "
                "pixels outside it are void"
            )
        if candidates and overrides.mask_set:
            named, _ = _take_named(root, folder, candidates, overrides.mask_set, "--mask-set")
            candidates = [named]
        if candidates:
            best = _choose_mask_set(root, folder, candidates)
            folder.files = image_files
            chosen.append((folder, best))
    if not chosen:
        if not masks:  # nothing but images: not a dataset discovery can explain
            return None
        raise _near_miss(root, images, masks, pattern)
    chosen = _one_image_folder_per_mask_set(root, chosen)
    return _discovery(root, folders, images, chosen, roi)


def _discovery(
    root: Path,
    folders: list[Folder],
    images: list[Folder],
    chosen: list[tuple[Folder, MaskSet]],
    roi: dict[Path, Path],
) -> Discovery:
    """The pairs of the chosen image folder / mask set couples, with every decision said."""
    decisions = [note for folder, _ in chosen for note in folder.notes]
    kept = {folder.path for folder, _ in chosen}
    decisions += [
        f"ignored images {_relative(root, f.path)}: no mask set pairs with them"
        for f in images
        if f.path not in kept and not f.notes
    ]
    pairs: dict[str, list[Pair]] = {}
    unpaired: list[Path] = []
    for folder, mask_set in chosen:
        split = folder.split or "all"
        for stem in sorted(folder.files):
            if stem in mask_set.by_stem:
                pairs.setdefault(split, []).append((folder.files[stem], mask_set.by_stem[stem]))
            else:
                unpaired.append(folder.files[stem])
    used = {mask for _, mask_set in chosen for mask in mask_set.by_stem.values()}
    unmatched = {mask for _, mask_set in chosen for mask in mask_set.pool if mask not in used}
    class_file = _class_file(root, folders, decisions)
    pairs = {s: sorted(p) for s, p in pairs.items()}
    return Discovery(pairs, class_file, sorted(unmatched), decisions, sorted(unpaired), roi)


def _take_named(
    root: Path, folder: Folder, candidates: list[MaskSet], name: str, flag: str
) -> tuple[MaskSet, list[MaskSet]]:
    """The candidate named `name` by the user, and the others; none of that name is an error."""
    named = [c for c in candidates if c.is_named(name)]
    if len(named) != 1:
        offered = ", ".join(sorted({c.flag for c in candidates}))
        problem = "no mask set named {!r} pairs" if not named else f"{len(named)} mask sets named {{!r}} pair"
        raise SegwiseError(
            f"{root}: {problem.format(name)} with the images in {_relative(root, folder.path)}; "
            f"pass {flag} with one of: {offered}"
        )
    (found,) = named
    return found, [c for c in candidates if c is not found]


# ---------------------------------------------------------------------------------------------- the tree


def _scan(root: Path, overrides: Overrides, pattern: MaskPattern | None) -> list[Folder]:
    """Every folder holding image files, with its role and split: the folders --images and --masks
    give, and where either is not given, the folders of that role found under `root`."""
    given_images = overrides.image_folders(root)
    given_masks = overrides.mask_folders(root)
    folders = [
        _given(root, path, split, masks)
        for given, masks in ((given_images, False), (given_masks, True))
        for split, path in (given or {}).items()
    ]
    given = {folder.path for folder in folders}
    for folder in _walk(root, pattern):
        if folder.path in given or (given_masks if folder.masks else given_images) is not None:
            continue
        folders.append(folder)
    return folders


def _given(root: Path, path: Path, split: str, masks: bool) -> Folder:
    files = _files_by_stem(path, os.listdir(path))
    if not files:
        raise SegwiseError(f"{path}: no image files in this folder given as {'masks' if masks else 'images'}")
    split = SPLIT_ALIASES[split] if split != "all" else _split_of(_relative_path(root, path))
    return Folder(path, files, split, 2 if masks else 0, masks)


def _walk(root: Path, pattern: MaskPattern | None) -> list[Folder]:
    """Every folder under `root` (hidden ones skipped) holding image files. A folder holds masks when
    its name or its files say so, or when every file fits the --mask-pattern."""
    folders = []
    for path, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS)
        files = _files_by_stem(Path(path), names)
        if not files:
            continue
        folder = Path(path)
        relative = folder.relative_to(root)
        score = _label_score(folder.name) if folder != root else 0
        if not score and len(relative.parts) > 1 and _split_of(Path(folder.name)):
            score = _label_score(folder.parent.name)  # annotations/training/: the split's parent says labels
        split = _split_of(relative)
        if pattern is not None and all(pattern.key(f.name) is not None for f in files.values()):
            masks = True
        else:
            masks = score > 0 or _looks_like_masks(list(files.values()))
        folders.append(Folder(folder, files, split, score, masks))
    return folders


def _files_by_stem(folder: Path, names: list[str]) -> dict[str, Path]:
    """Image (and GIF mask) files by stem; a stem held by two files is skipped, discovery stays unsure."""
    files: dict[str, Path] = {}
    seen: Counter = Counter()
    for name in sorted(names):
        path = folder / name
        if name.startswith(".") or path.suffix.lower() not in IMAGE_SUFFIXES + MASK_ONLY_SUFFIXES:
            continue
        seen[path.stem] += 1
        files[path.stem] = path
    return {stem: path for stem, path in files.items() if seen[stem] == 1}


def _words(name: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", name.lower()) if w]


def _label_score(name: str) -> int:
    """2 for a name that says labels (gt, manual, *annot, segmentation, ...), 1 for mask(s), else 0."""
    lower = name.lower()
    words = _words(name)
    words += [w.rstrip("0123456789") for w in words]  # manual1, labels2
    if lower in LABEL_NAMES or any(
        w in LABEL_WORDS or w.endswith("annot") or w.startswith("segmentation") or "groundtruth" in w
        for w in words
    ):
        return 2
    return 1 if any(w in MASK_WORDS for w in words) else 0


def names_dataset_folder(name: str) -> bool:
    """Whether a folder's name says it holds a dataset's images or masks (images, masks, gt, labels, ...)."""
    return _label_score(name) > 0 or any(word in IMAGE_WORDS for word in _words(name))


def _split_of(relative: Path) -> str | None:
    """The split named at the outermost level of a folder's path that names one."""
    for part in relative.parts:
        for word in _words(part):
            if word in SPLIT_ALIASES:
                return SPLIT_ALIASES[word]
    return None


def _looks_like_masks(files: list[Path]) -> bool:
    """A few files sampled across the folder are palette or 1-bit images, or hold few distinct values or
    colours. JPEG files are photographs here: JPEG masks are recognised by their folder's name only."""
    if not files or any(f.suffix.lower() in (".jpg", ".jpeg") for f in files):
        return False
    samples = files[:: max(1, len(files) // SAMPLES)][:SAMPLES]
    for path in samples:
        try:
            with open_image(path) as image:  # checked against the pixel limit before decoding
                if image.mode in ("P", "1"):
                    continue
                array = np.asarray(image.convert("RGB") if image.mode not in ("L", "I;16", "I") else image)
        except (OSError, ValueError, SegwiseError):
            return False
        if array.ndim == 3:  # one number per colour, so that counting them stays cheap
            array = (
                (array[..., 0].astype(np.int32) << 16) | (array[..., 1].astype(np.int32) << 8) | array[..., 2]
            )
        if len(np.unique(array)) > FEW_VALUES:
            return False
    return True


# ---------------------------------------------------------------------------------------------- pairing


def _candidates(
    root: Path, folder: Folder, masks: list[Folder], pattern: MaskPattern | None
) -> tuple[dict[str, Path], list[MaskSet]]:
    """The images of a folder (without masks kept beside them) and every mask set pairing (most of) them."""
    where = _relative(root, folder.path)
    images, inline = _inline_sets(folder.files, pattern)
    candidates = []
    for suffix, (rule, by_stem) in inline.items():
        pool = list(by_stem.values())
        coverage = len(by_stem) / len(images)
        candidates.append(
            MaskSet(
                f"*{suffix} in {where}", rule, by_stem, _label_score(suffix), pool, False, coverage, suffix
            )
        )
    for mask_folder in masks:
        if mask_folder.split not in (folder.split, None):  # a mask folder without a split serves all
            continue
        files = _fitting(mask_folder.files, pattern)
        name = _relative(root, mask_folder.path)
        for rule, by_stem in _pairings(images, files, pattern):
            coverage = len(by_stem) / len(images)
            candidates.append(
                MaskSet(
                    name,
                    rule,
                    by_stem,
                    mask_folder.label_score,
                    list(files.values()),
                    False,
                    coverage,
                    mask_folder.path.name,
                )
            )
    return images, candidates


def _fitting(files: dict[str, Path], pattern: MaskPattern | None) -> dict[str, Path]:
    """The files a --mask-pattern reads as masks (all of them without one)."""
    if pattern is None:
        return files
    return {stem: path for stem, path in files.items() if pattern.key(path.name) is not None}


def _relative(root: Path, path: Path) -> str:
    """How decisions name a folder: relative to the root (or absolute, for a folder given outside it)."""
    return str(_relative_path(root, path)) + "/" if path != root else "./"


def _relative_path(root: Path, path: Path) -> Path:
    try:
        return path.relative_to(root)
    except ValueError:
        return path


def _inline_sets(
    files: dict[str, Path], pattern: MaskPattern | None = None
) -> tuple[dict[str, Path], dict[str, tuple[str, dict[str, Path]]]]:
    """Images and masks side by side: the images, and suffix → (rule, image stem → mask) for each set
    of masks kept beside them. With a --mask-pattern, the files fitting it are the masks. Without one,
    the masks are the files named image stem + one suffix (starting with a separator) and every
    remaining file has one; suffixes of files that are not masks by their name or content are not
    masks (`x_flipped.jpg`)."""
    if pattern is not None:
        fitting = _fitting(files, pattern)
        images = {stem: path for stem, path in files.items() if stem not in fitting}
        pairings = _pairings(images, fitting, pattern) if images and fitting else []
        return images, {pattern.text: pairings[0]} if pairings else {}
    stems = sorted(files)
    found: Counter = Counter()
    for stem in stems:
        grown = (other for other in _starting_with(stems, stem) if other != stem)
        found.update(other[len(stem) :] for other in grown if other[len(stem)] in SEPARATORS)
    most = max(found.values(), default=0)
    suffixes = [suffix for suffix, count in found.most_common(10) if 2 * count >= most]
    derived = {stem + s for stem in stems for s in suffixes if stem + s in files}
    bases = {s: files[s] for s in stems if s not in derived}
    sets = {}
    for suffix in sorted(suffixes):
        by_stem = {s: files[s + suffix] for s in bases if s + suffix in files}
        if bases and len(by_stem) == len(bases):
            masks = list(by_stem.values())
            if _label_score(suffix) or _looks_like_masks(masks):
                sets[suffix] = (f"mask = image + {suffix!r}", by_stem)
    if not sets:
        return files, {}
    return bases, sets


def _lead(stem: str) -> str | None:
    """The leading ID of a stem: its first word, when that holds a digit (`21` of `21_training`)."""
    first = re.split(f"[{re.escape(SEPARATORS)}]", stem, maxsplit=1)[0]
    return first if any(c.isdigit() for c in first) else None


def _common_affixes(stems: list[str]) -> tuple[str, str]:
    prefix = os.path.commonprefix(stems)
    suffix = os.path.commonprefix([s[::-1] for s in stems])[::-1]
    return prefix, suffix


def _rules(images: list[str], masks: list[str]) -> list[tuple[str, object, object]]:
    """Candidate rules (description, image key, mask key) for sorted stems, affixes read from the data."""
    rules: list[tuple[str, object, object]] = [("same stem", lambda s: s, lambda s: s)]
    mask_set = sorted(masks)
    grown: Counter = Counter()  # mask = image + suffix
    shrunk: Counter = Counter()  # image = mask + suffix
    for image in images[:50]:
        grown.update(m[len(image) :] for m in _starting_with(mask_set, image) if _suffix_like(m, image))
    for mask in mask_set[:50]:
        shrunk.update(i[len(mask) :] for i in _starting_with(images, mask) if _suffix_like(i, mask))
    for suffix, _ in grown.most_common(5):
        cut = len(suffix)
        rules.append((f"mask = image + {suffix!r}", lambda s: s, lambda s, x=suffix, n=cut: _cut(s, x, n)))
    for suffix, _ in shrunk.most_common(5):
        cut = len(suffix)
        rules.append((f"image = mask + {suffix!r}", lambda s, x=suffix, n=cut: _cut(s, x, n), lambda s: s))
    rules.append(("shared leading ID", _lead, _lead))
    if len(images) >= 2 and len(masks) >= 2:
        (ip, is_), (mp, ms) = _common_affixes(images), _common_affixes(masks)
        if (ip, is_) != (mp, ms):
            described = f"common affixes {ip!r}…{is_!r} ↔ {mp!r}…{ms!r}"
            rules.append((described, _between(ip, is_), _between(mp, ms)))
    return rules


def _suffix_like(longer: str, stem: str) -> bool:
    """`longer` is `stem` plus a suffix that does not continue a number (`x_1` + `0` is `x_10`)."""
    return longer != stem and not longer[len(stem)].isdigit()


def _starting_with(sorted_stems: list[str], prefix: str) -> list[str]:
    start = bisect.bisect_left(sorted_stems, prefix)
    found = []
    for stem in sorted_stems[start:]:
        if not stem.startswith(prefix):
            break
        found.append(stem)
    return found


def _cut(stem: str, suffix: str, length: int) -> str | None:
    return stem[:-length] if stem.endswith(suffix) and len(stem) > length else None


def _between(prefix: str, suffix: str):
    def key(stem: str) -> str | None:
        if not (stem.startswith(prefix) and stem.endswith(suffix)) or len(stem) <= len(prefix) + len(suffix):
            return None
        return stem[len(prefix) : len(stem) - len(suffix)]

    return key


def _pairings(
    images: dict[str, Path], masks: dict[str, Path], pattern: MaskPattern | None = None
) -> list[tuple[str, dict[str, Path]]]:
    """Every rule that pairs images with masks one to one (distinct pairings only): the --mask-pattern
    alone when given, else the rules found in the data, each counting only when it pairs at least
    COVERAGE of the images (the rest are reported as images without a mask)."""
    if pattern is not None:
        rules = [(str(pattern), pattern.image_key, lambda stem: pattern.key(masks[stem].name))]
        least = 1
    else:
        rules = _rules(sorted(images), sorted(masks))
        least = max(1, math.ceil(COVERAGE * len(images)))
    found: list[tuple[str, dict[str, Path]]] = []
    for rule, image_key, mask_key in rules:
        by_stem = _pair_by(images, masks, image_key, mask_key)
        if by_stem is not None and len(by_stem) >= least and by_stem not in [p for _, p in found]:
            found.append((rule, by_stem))
    return found


def _pair_by(images: dict[str, Path], masks: dict[str, Path], image_key, mask_key) -> dict[str, Path] | None:
    """image stem → mask under keys; None when a key is shared by two images or two masks (two ways)."""
    mask_of: dict[str, Path | None] = {}
    for stem, path in masks.items():
        key = mask_key(stem)
        if key is None:
            continue
        if key in mask_of:
            mask_of[key] = None  # two masks for one key: not one way
        else:
            mask_of[key] = path
    keys = {stem: image_key(stem) for stem in images}
    if len(set(keys.values())) != len(keys):
        return None
    return {stem: mask_of[key] for stem, key in keys.items() if key is not None and mask_of.get(key)}


# ---------------------------------------------------------------------------------------------- choosing


def _choose_mask_set(root: Path, folder: Folder, candidates: list[MaskSet]) -> MaskSet:
    """The most plausible mask set: not a region of interest, named like labels, the first annotator."""
    where = _relative(root, folder.path)
    if len(candidates) > 1:
        for candidate in candidates:
            candidate.region = _is_region(list(candidate.by_stem.values()))
    ranked = sorted(candidates, key=_rank)
    best = ranked[0]
    if len(ranked) > 1 and _rank(ranked[1]) == _rank(best):
        tied = [c for c in ranked if _rank(c) == _rank(best)]
        choices = "; ".join(f"{c.name} ({c.rule})" for c in tied)
        flags = sorted({c.flag for c in tied})
        fix = (
            f"choose one with --mask-set ({' or '.join(flags)})"
            if len(flags) == len(tied)
            else "name the masks with --mask-pattern (e.g. '{stem}_gt.png')"
        )
        raise SegwiseError(
            f"{root}: images in {where} pair equally well with {len(tied)} mask sets: {choices}; {fix}"
        )
    folder.notes.append(f"images {where}: masks from {best.name} ({best.rule})")
    folder.notes += [f"  rejected {other.name}: {_why_not(other, best)}" for other in ranked[1:]]
    return best


def _rank(mask_set: MaskSet) -> tuple[bool, int, int, float]:
    return (mask_set.region, -mask_set.label_score, mask_set.annotator, -mask_set.coverage)


def _why_not(other: MaskSet, best: MaskSet) -> str:
    if other.region:
        return f"one large region per image: a region of interest, not labels (use it as one: --roi {other.flag})"
    if other.label_score < best.label_score:
        return f"its name says labels less clearly than {best.name} (choose it: --mask-set {other.flag})"
    if other.annotator != best.annotator:
        return f"annotator {other.annotator}; annotator {best.annotator} is preferred (choose it: --mask-set {other.flag})"
    return f"pairs {other.coverage:.0%} of the images where {best.name} pairs {best.coverage:.0%}"


def _is_region(masks: list[Path]) -> bool:
    """Every sampled mask is binary with its foreground covering most of the image."""
    for path in masks[:SAMPLES]:
        try:
            mask = read_mask(path)
        except SegwiseError:
            return False
        values = np.unique(mask)
        if mask.ndim != 2 or len(values) > 2 or np.count_nonzero(mask) < REGION_SHARE * mask.size:
            return False
    return True


def _channels(path: Path) -> int:
    try:
        with open_image(path) as image:
            return len(image.getbands())
    except (OSError, SegwiseError):
        return 0


def _one_image_folder_per_mask_set(
    root: Path, chosen: list[tuple[Folder, MaskSet]]
) -> list[tuple[Folder, MaskSet]]:
    """Where several image folders pair with the very same masks (rgb/, gray/: the same images), keep
    the one with most channels."""
    by_masks: dict[frozenset[Path], list[tuple[Folder, MaskSet]]] = {}
    for folder, mask_set in chosen:
        by_masks.setdefault(frozenset(mask_set.by_stem.values()), []).append((folder, mask_set))
    kept = []
    for group in by_masks.values():
        ranked = sorted(group, key=lambda g: -_channels(next(iter(g[0].files.values()))))
        channels = [_channels(next(iter(f.files.values()))) for f, _ in ranked]
        if len(ranked) > 1 and channels[0] == channels[1]:
            names = ", ".join(_relative(root, f.path) for f, _ in ranked)
            raise SegwiseError(
                f"{root}: {names} hold the same images for the masks {ranked[0][1].name}; keep one "
                "(move the others out of the dataset folder)"
            )
        kept.append(ranked[0])
        for (folder, _), count in zip(ranked[1:], channels[1:], strict=True):
            ranked[0][0].notes.append(
                f"  rejected images {_relative(root, folder.path)}: {count} channel(s) where "
                f"{_relative(root, ranked[0][0].path)} has {channels[0]}"
            )
    return kept


def _class_file(root: Path, folders: list[Folder], decisions: list[str]) -> Path | None:
    """The tree's one class-name file (the root's own first); several elsewhere: none, said why."""
    stems = {stem for folder in folders for stem in folder.files}
    found = []
    for path, dirs, names in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name in CLASS_FILES or (
                name in LOOSE_CLASS_FILES and _reads_as_classes(Path(path) / name, stems)
            ):
                found.append(Path(path) / name)
    at_root = [p for p in found if p.parent == root]
    if at_root or len(found) == 1:
        chosen = (at_root or found)[0]
        decisions.append(f"class names from {_relative(root, chosen.parent)}{chosen.name}")
        return chosen
    if found:
        names = ", ".join(str(p.relative_to(root)) for p in found)
        decisions.append(f"class names: none used, several files ({names}); put the right one in {root}")
    return None


def _reads_as_classes(path: Path, stems: set[str]) -> bool:
    """labels.txt / labelmap.txt holding one class name a line (not a list of the dataset's files), or
    CVAT's labelmap.txt (`name:r,g,b::` lines under a `#` header)."""
    lines = _content_lines(path)
    if not lines:
        return False
    return _labelmap_lines(path, lines) or all(
        re.fullmatch(r"[\w \-]+", line) and line not in stems for line in lines
    )


def is_labelmap(path: Path) -> bool:
    """CVAT's labelmap.txt: `name:r,g,b:parts:actions` lines under a `#` header."""
    lines = _content_lines(path)
    return bool(lines) and _labelmap_lines(path, lines)


def _labelmap_lines(path: Path, lines: list[str]) -> bool:
    return path.name == "labelmap.txt" and all(re.fullmatch(LABELMAP_LINE, line) for line in lines)


def _content_lines(path: Path) -> list[str]:
    """The non-empty lines of a small text file that are no `#` comment; none when it is no text."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError):
        return []
    return [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]


# ---------------------------------------------------------------------------------------------- nothing pairs


def _near_miss(
    root: Path, images: list[Folder], masks: list[Folder], pattern: MaskPattern | None
) -> SegwiseError:
    """The error when no rule pairs the images: the rule and folders that came closest, with an example
    and the flag that would pair them."""
    folders = ", ".join(_relative(root, f.path) for f in images[:3])
    if pattern is not None:
        example = next(iter(_inline_sets(images[0].files, pattern)[0].values()), None)
        return SegwiseError(
            f"{root}: no mask fits {pattern} with the images in {folders}"
            + (f" (none for `{example.name}`)" if example else "")
            + "; compare the pattern with a mask's file name"
        )
    best: tuple[int, str, Folder, Folder, dict[str, Path]] | None = None
    for image_folder in images:
        bases, _ = _inline_sets(image_folder.files)
        for mask_folder in masks:
            for rule, image_key, mask_key in _rules(sorted(bases), sorted(mask_folder.files)):
                by_stem = _pair_by(bases, mask_folder.files, image_key, mask_key) or {}
                if best is None or len(by_stem) > best[0]:
                    best = (len(by_stem), rule, image_folder, mask_folder, by_stem)
    if best is None or best[0] == 0:
        theirs = ", ".join(_relative(root, f.path) for f in masks[:3]) or "no mask folder"
        return SegwiseError(
            f"{root}: images in {folders} pair with no masks ({theirs}) under any rule; say how a mask is "
            "named after its image with --mask-pattern (e.g. '{stem}_mask.png'), or pass --images DIR --masks DIR"
        )
    count, rule, image_folder, mask_folder, by_stem = best
    stem = next(iter(sorted(by_stem)))
    example = f"images `{image_folder.files[stem].name}` and masks `{by_stem[stem].name}`"
    example += f" share the leading ID `{_lead(stem)}`" if rule == "shared leading ID" else f" pair by {rule}"
    image_where, mask_where = _relative(root, image_folder.path), _relative(root, mask_folder.path)
    missing = sorted(set(_inline_sets(image_folder.files)[0]) - set(by_stem))
    if not missing:  # every image pairs, but with masks of another split
        return SegwiseError(
            f"{root}: {example}, but {image_where} and {mask_where} name different splits; pass "
            f"--images {image_where.rstrip('/')} --masks {mask_where.rstrip('/')} (one folder per split: "
            "train=DIR,val=DIR)"
        )
    suggested = _suggested_pattern(stem, by_stem[stem].name, rule)
    fix = (
        f"pass --mask-pattern '{suggested}' to pair them so (check then lists the images without a mask)"
        if suggested
        else "say how a mask is named after its image with --mask-pattern"
    )
    return SegwiseError(
        f"{root}: no rule pairs the images with masks; nearest: {example}, but only {count} of "
        f"{count + len(missing)} images in {image_where} find a mask in {mask_where} (none for "
        f"`{image_folder.files[missing[0]].name}`); add the missing masks, or {fix}"
    )


def _suggested_pattern(stem: str, mask_name: str, rule: str) -> str | None:
    """A --mask-pattern template naming `mask_name` after the image `stem`, when one fits."""
    lead = _lead(stem)
    if rule == "shared leading ID" and lead and mask_name.startswith(lead):
        return "{id}" + mask_name[len(lead) :]
    if mask_name.startswith(stem):
        return "{stem}" + mask_name[len(stem) :]
    return None
