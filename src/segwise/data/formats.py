"""Finding image/mask pairs on disk: every common layout, auto-detected or named.

Layouts (`layout=` option; "auto" tries them in this order):

    coco      DATA/annotations/*.json (or DATA/*.json) COCO instances; images in DATA/images/[split]/,
              DATA/<split>/ or DATA/; the split is read from the file name (instances_val2017.json → val)
    voc       DATA/JPEGImages/, DATA/SegmentationClass/ (palette PNGs, 255 = ignore),
              DATA/ImageSets/Segmentation/{train,val,test}.txt
    segnet    DATA/{train,val,test}/ images beside DATA/{train,val,test}annot/ masks (SegNet CamVid;
              without a class-name file its 11 CamVid names, value 11 = Unlabelled = void)
    fastai    DATA/images/, DATA/labels/ (x.png ↔ x_P.png), DATA/codes.txt, DATA/valid.txt (val file names)
    folders   DATA/images/ + DATA/masks/ (or labels/), optionally split as DATA/images/{train,val,test}/
              or DATA/{train,val,test}/images/; or images and masks side by side in one folder
              (x.png ↔ x_mask.png); masks/<class name>/ subfolders hold one binary mask per class
              (multilabel)
    tree      image folders and mask folders (or masks beside their images) anywhere below DATA
              paired by file stem, one rule per folder (see discover.py); tried last, also when a
              layout above fits the folder names but finds no masks folder or no pairs; the only
              layout that reads the explicit overrides (overrides.py: --images, --masks,
              --mask-pattern, --mask-set, --roi)

Masks are matched to images by file stem, also with a mask suffix (`x.png` ↔ `masks/x.png`,
`x_mask.png`, `x_P.png`, ...). Split list files `train.txt`/`val.txt`/`test.txt` (stems or file names,
one a line) beside the folders split a dataset that has no split folders. Class names come from
`class_dict.csv` (name,r,g,b), `classes.txt` or `codes.txt` (see dataset.py for how they are used).

Problems found while pairing (unmatched files, duplicate stems, listed files that do not exist) are
collected in `DataSource.problems` so that `segwise check` can report them all; `find_pairs` and
`load_data` refuse a dataset that has any.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..config import LAYOUTS
from ..constants import IGNORE_INDEX
from ..errors import SegwiseError
from ..io import is_image_file, read_mask
from .discover import CLASS_FILES, discover, is_labelmap
from .overrides import SPLIT_ALIASES, Overrides

SPLITS = ("train", "val", "test")
MASK_SUFFIXES = ("_mask", "_masks", "_P", "_label", "_labels", "_gt", "_seg", "_annot")
MASK_DIRS = ("masks", "labels", "annotations", "annot", "gt")
VOID_NAMES = ("void", "unlabelled", "unlabeled")
VOC_NAMES = (
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog horse "
    "motorbike person pottedplant sheep sofa train tvmonitor"
).split()
CAMVID_NAMES = (
    "Sky Building Pole Road Pavement Tree SignSymbol Fence Car Pedestrian Bicyclist Unlabelled"
).split()
Pair = tuple[Path, Path]


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a dataset: the file it concerns, a kind (for grouping) and a sentence."""

    path: Path
    kind: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class ClassNames:
    """Names (and colours, from class_dict.csv) read from a class-name file; row i names stored value i."""

    names: list[str]
    colours: list[list[int]] | None
    path: Path

    @property
    def void_row(self) -> int | None:
        rows = [i for i, name in enumerate(self.names) if name.strip().lower() in VOID_NAMES]
        return rows[0] if rows else None


@dataclass
class DataSource:
    """A dataset found on disk: pairs per split, class names if a file gives them, and how to read masks.

    `pairs[split]` is a list of (image path, mask path); for COCO the mask path is the annotation file,
    for per-class mask folders it is the first class's mask. `read_mask` gives the stored mask values:
    H×W (index or gray values), H×W×3 (colour-coded) or H×W×C (multilabel, one channel per class).
    """

    root: Path
    layout: str
    pairs: dict[str, list[Pair]]
    class_names: ClassNames | None = None
    class_masks: list[dict[str, Path]] = field(default_factory=list)  # per class: image stem → mask
    problems: list[Problem] = field(default_factory=list)
    coco: dict[Path, CocoMasks] = field(default_factory=dict)
    decisions: list[str] = field(default_factory=list)  # how the pairs were found, for `segwise check`
    roi: dict[Path, Path] = field(default_factory=dict)  # image → its region-of-interest mask (--roi)

    @property
    def per_class_masks(self) -> bool:
        """Each class has its own mask folder: a pixel may carry several classes (a per-label task)."""
        return bool(self.class_masks)

    def read_mask(self, pair: Pair) -> np.ndarray:
        image_path, mask_path = pair
        if mask_path in self.coco:
            return self.coco[mask_path].mask(image_path)
        if self.class_masks:
            channels = [read_mask(masks[image_path.stem]) for masks in self.class_masks]
            return np.stack([c if c.ndim == 2 else c[..., 0] for c in channels], axis=-1)
        return read_mask(mask_path)

    def outside_roi(self, image_path: Path, size: tuple[int, int]) -> np.ndarray | None:
        """H×W booleans, True outside the image's region of interest (void); None without one."""
        if image_path not in self.roi:
            return None
        path = self.roi[image_path]
        region = read_mask(path)
        if region.shape[:2] != tuple(size):
            raise SegwiseError(
                f"{path}: region of interest is {region.shape[1]}×{region.shape[0]} but its image "
                f"{image_path.name} is {size[1]}×{size[0]}; regions must match their images"
            )
        return ~(region if region.ndim == 2 else region[..., 0]).astype(bool)

    def void_outside_roi(self, labels: np.ndarray, image_path: Path) -> np.ndarray:
        """Class indices (H×W, or C×H×W per label) with IGNORE_INDEX outside the region of interest."""
        outside = self.outside_roi(image_path, labels.shape[-2:])
        if outside is not None:
            labels = labels.copy()
            labels[..., outside] = IGNORE_INDEX
        return labels

    def files(self) -> list[Path]:
        """Every file the decoded data depends on (for cache keys): images, masks (all class folders of
        multilabel data, COCO files once, regions of interest), and the class-name file."""
        files = {path for pairs in self.pairs.values() for pair in pairs for path in pair}
        files |= {path for masks in self.class_masks for path in masks.values()} | set(self.roi.values())
        if self.class_names is not None and self.class_names.path.is_file():
            files.add(self.class_names.path)
        return sorted(files)

    def check(self) -> None:
        """Refuse a dataset with problems: the first one, with a count of the rest."""
        if self.problems:
            more = f" (and {len(self.problems) - 1} more problem(s); `segwise check {self.root}` lists them)"
            raise SegwiseError(str(self.problems[0]) + (more if len(self.problems) > 1 else ""))


def read_class_names(root: Path) -> ClassNames | None:
    """The first class-name file found in `root` (class_dict.csv, classes.txt, codes.txt, or the
    labelmap.txt of a CVAT export), or None."""
    for name in CLASS_FILES:
        path = Path(root) / name
        if path.is_file():
            return _parse_class_file(path)
    labelmap = Path(root) / "labelmap.txt"
    if labelmap.is_file() and is_labelmap(labelmap):
        return _parse_class_file(labelmap)
    return None


def _read_lines(path: Path) -> list[str]:
    """Non-empty stripped lines of a small text file (utf-8, a byte-order mark from Excel tolerated)."""
    try:
        return [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise SegwiseError(f"{path}: cannot read this text file ({error}); save it as UTF-8 text") from None


def _parse_class_file(path: Path) -> ClassNames | None:
    lines = _read_lines(path)
    if (
        path.name == "labelmap.txt"
        and lines
        and all(":" in line for line in lines if not line.startswith("#"))
    ):
        return _parse_labelmap(path, [line for line in lines if not line.startswith("#")])
    if path.suffix.lower() != ".csv":
        return ClassNames(lines, None, path) if lines else None
    rows = list(csv.reader(lines))
    if rows and rows[0] and rows[0][0].strip().lower() in ("name", "class", "class_name"):
        rows = rows[1:]
    names, colours = [], []
    for number, row in enumerate(rows, start=2):
        try:
            name, r, g, b = (cell.strip() for cell in row[:4])
            colour = [int(r), int(g), int(b)]
        except ValueError:
            raise SegwiseError(
                f"{path}: line {number} is {','.join(row)!r}; each line must be name,r,g,b with r,g,b 0..255"
            ) from None
        if not all(0 <= c <= 255 for c in colour):
            raise SegwiseError(f"{path}: line {number} has colour {colour}; r,g,b must be 0..255")
        names.append(name)
        colours.append(colour)
    return ClassNames(names, colours, path) if names else None


def _parse_labelmap(path: Path, lines: list[str]) -> ClassNames:
    """CVAT's labelmap.txt: `name:r,g,b:parts:actions` a line; row i names value i, its colour codes it."""
    names, colours = [], []
    for line in lines:
        name, colour = line.split(":")[:2]
        try:
            rgb = [int(c) for c in colour.split(",")]
        except ValueError:
            rgb = []
        if len(rgb) != 3 or not all(0 <= c <= 255 for c in rgb):
            raise SegwiseError(f"{path}: line {line!r} is not name:r,g,b with r,g,b 0..255; fix the line")
        names.append(name.strip())
        colours.append(rgb)
    return ClassNames(names, colours, path)


# ---------------------------------------------------------------------------------------------- matching


def _image_files(folder: Path, problems: list[Problem]) -> dict[str, Path]:
    """Image files of a folder by stem; a second file with the same stem is a problem and is skipped."""
    files: dict[str, Path] = {}
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if not is_image_file(path):
            continue
        if path.stem in files:
            problems.append(
                Problem(
                    path,
                    "duplicate stem",
                    f"two files share the stem '{path.stem}' ({files[path.stem].name}); rename or remove one",
                )
            )
            continue
        files[path.stem] = path
    return files


def _mask_stem_of(mask: Path, image_stems: set[str]) -> str:
    """The image stem a mask belongs to: its own stem, or its stem without a mask suffix."""
    if mask.stem in image_stems:
        return mask.stem
    for suffix in MASK_SUFFIXES:
        if mask.stem.endswith(suffix) and mask.stem[: -len(suffix)] in image_stems:
            return mask.stem[: -len(suffix)]
    return mask.stem


def _match(
    images: dict[str, Path], masks: dict[str, Path], masks_dir: Path, problems: list[Problem]
) -> list[Pair]:
    """Pair images with masks by stem (masks may carry a suffix such as _mask); report the leftovers."""
    by_image: dict[str, Path] = {}
    image_stems = set(images)
    for mask in masks.values():
        stem = _mask_stem_of(mask, image_stems)
        if stem in images and stem not in by_image:
            by_image[stem] = mask
        else:
            problems.append(
                Problem(mask, "unmatched mask", "mask without an image; add the image or remove the mask")
            )
    for stem, image in images.items():
        if stem not in by_image:
            problems.append(
                Problem(
                    image,
                    "unmatched image",
                    f"no mask with the same name in {masks_dir}; add {masks_dir / (stem + '.png')} or remove the image",
                )
            )
    return [(images[stem], by_image[stem]) for stem in sorted(by_image)]


class _NoMasksFolder(SegwiseError):
    """The folders layout fits the folder names but its masks folder is missing: discovery may still
    pair the tree (test/images/ beside test/1st_manual/)."""


def _match_folders(images_dir: Path, masks_dir: Path, problems: list[Problem]) -> list[Pair]:
    if not masks_dir.is_dir():
        raise _NoMasksFolder(
            f"{masks_dir}: masks folder not found; put one mask per image there, same file stem"
        )
    return _match(_image_files(images_dir, problems), _image_files(masks_dir, problems), masks_dir, problems)


def _match_side_by_side(folder: Path, problems: list[Problem]) -> list[Pair]:
    """Images and masks in one folder, masks named with a suffix: x.png ↔ x_mask.png."""
    files = _image_files(folder, problems)
    masks = {s: p for s, p in files.items() if any(s.endswith(x) for x in MASK_SUFFIXES)}
    images = {s: p for s, p in files.items() if s not in masks}
    return _match(images, masks, folder, problems)


def _has_side_by_side_masks(folder: Path) -> bool:
    return folder.is_dir() and any(
        is_image_file(p) and any(p.stem.endswith(x) for x in MASK_SUFFIXES) for p in folder.iterdir()
    )


def _mask_dir(parent: Path) -> Path | None:
    return next((parent / name for name in MASK_DIRS if (parent / name).is_dir()), None)


def _split_by_lists(
    pairs: list[Pair], lists: dict[str, Path], problems: list[Problem]
) -> dict[str, list[Pair]]:
    """Split one pool of pairs by list files (stems or file names, one a line)."""
    by_stem = {image.stem: (image, mask) for image, mask in pairs}
    found: dict[str, list[Pair]] = {}
    for split, path in lists.items():
        found[split] = []
        for line in _read_lines(path):
            stem = Path(line).stem
            if not stem:
                continue
            if stem in by_stem:
                found[split].append(by_stem[stem])
            else:
                problems.append(
                    Problem(
                        path,
                        "listed file missing",
                        f"lists '{stem}', which has no image/mask pair; fix the list",
                    )
                )
    return found


def _list_files(folder: Path) -> dict[str, Path]:
    return {s: folder / f"{s}.txt" for s in SPLITS if (folder / f"{s}.txt").is_file()}


# ---------------------------------------------------------------------------------------------- layouts


def _folders(root: Path, problems: list[Problem]) -> DataSource | None:
    pairs: dict[str, list[Pair]] = {}
    masks_root: Path | None = None
    if any((root / s / "images").is_dir() for s in SPLITS):  # DATA/train/images
        for s in SPLITS:
            if (root / s / "images").is_dir():
                masks_dir = _mask_dir(root / s) or root / s / "masks"
                pairs[s] = _match_folders(root / s / "images", masks_dir, problems)
    elif (root / "images").is_dir():
        masks_root = _mask_dir(root)
        split_dirs = [s for s in SPLITS if (root / "images" / s).is_dir()]
        if masks_root is None and _has_side_by_side_masks(root / "images"):
            pairs["all"] = _match_side_by_side(root / "images", problems)
        elif masks_root is not None and _class_subfolders(masks_root) and not split_dirs:
            return _per_class_folders(root, masks_root, problems)
        elif split_dirs:
            masks_root = masks_root or root / "masks"
            pairs = {s: _match_folders(root / "images" / s, masks_root / s, problems) for s in split_dirs}
        else:
            pairs["all"] = _match_folders(root / "images", masks_root or root / "masks", problems)
    elif any(_has_side_by_side_masks(root / s) for s in SPLITS):
        pairs = {s: _match_side_by_side(root / s, problems) for s in SPLITS if (root / s).is_dir()}
    elif _has_side_by_side_masks(root):
        pairs["all"] = _match_side_by_side(root, problems)
    else:
        return None
    return DataSource(root, "folders", _apply_lists(root, pairs, problems), read_class_names(root))


def _apply_lists(root: Path, pairs: dict[str, list[Pair]], problems: list[Problem]) -> dict[str, list[Pair]]:
    lists = _list_files(root)
    if lists and list(pairs) == ["all"]:
        return _split_by_lists(pairs["all"], lists, problems)
    return pairs


def _class_subfolders(masks_root: Path) -> list[Path]:
    """masks/<class>/ folders (multilabel), not split folders and not a folder holding masks itself."""
    subdirs = sorted(p for p in masks_root.iterdir() if p.is_dir() and not p.name.startswith("."))
    has_files = any(is_image_file(p) for p in masks_root.iterdir())
    if has_files or not subdirs or any(p.name in SPLITS for p in subdirs):
        return []
    return subdirs


def _per_class_folders(root: Path, masks_root: Path, problems: list[Problem]) -> DataSource:
    """masks/<class>/x.png: one binary mask per class; classes ordered by a name file, else by folder name."""
    folders = _class_subfolders(masks_root)
    names = read_class_names(root)
    if names is not None:
        by_name = {p.name: p for p in folders}
        missing = [n for n in names.names if n not in by_name]
        if missing:
            raise SegwiseError(
                f"{names.path}: classes {missing} have no folder in {masks_root}; add masks/<class>/ folders "
                "or fix the names"
            )
        folders = [by_name[n] for n in names.names]
    else:
        names = ClassNames([p.name for p in folders], None, masks_root)
    images = _image_files(root / "images", problems)
    per_class = [dict(_match(images, _image_files(f, problems), f, problems)) for f in folders]
    per_class = [{image.stem: mask for image, mask in matched.items()} for matched in per_class]
    complete = sorted(set(images).intersection(*per_class))  # images with a mask in every class folder
    pairs = [(images[stem], per_class[0][stem]) for stem in complete]
    source = DataSource(root, "folders", {"all": pairs}, names, per_class, problems)
    source.pairs = _apply_lists(root, source.pairs, problems)
    return source


def _fastai(root: Path, problems: list[Problem]) -> DataSource | None:
    """fastai CamVid: images/, labels/ (x_P.png), codes.txt, valid.txt naming the validation images."""
    if not ((root / "images").is_dir() and (root / "labels").is_dir() and (root / "codes.txt").is_file()):
        return None
    pairs = _match_folders(root / "images", root / "labels", problems)
    valid_list = root / "valid.txt"
    if valid_list.is_file():
        valid = set(_split_by_lists(pairs, {"val": valid_list}, problems)["val"])
        split = {"train": [p for p in pairs if p not in valid], "val": sorted(valid)}
    else:
        split = {"all": pairs}
    return DataSource(root, "fastai", split, _parse_class_file(root / "codes.txt"))


def _segnet(root: Path, problems: list[Problem]) -> DataSource | None:
    """SegNet CamVid: train/ + trainannot/, val/ + valannot/, test/ + testannot/."""
    if not ((root / "train").is_dir() and (root / "trainannot").is_dir()):
        return None
    pairs = {
        s: _match_folders(root / s, root / f"{s}annot", problems)
        for s in SPLITS
        if (root / s).is_dir() and (root / f"{s}annot").is_dir()
    }
    names = read_class_names(root) or ClassNames(list(CAMVID_NAMES), None, root / "trainannot")
    return DataSource(root, "segnet", pairs, names)


def _voc(root: Path, problems: list[Problem]) -> DataSource | None:
    """Pascal VOC: JPEGImages/, SegmentationClass/ (palette PNGs), ImageSets/Segmentation/*.txt."""
    if not ((root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir()):
        return None
    images = _image_files(root / "JPEGImages", problems)
    masks = _image_files(root / "SegmentationClass", problems)
    lists = _list_files(root / "ImageSets" / "Segmentation") or _list_files(root)
    # JPEGImages also holds the detection images: only images with a mask (or listed) belong here.
    listed = {Path(line).stem for path in lists.values() for line in _read_lines(path)}
    images = {s: p for s, p in images.items() if s in masks or s in listed}
    pairs = _match(images, masks, root / "SegmentationClass", problems)
    split = _split_by_lists(pairs, lists, problems) if lists else {"all": pairs}
    names = read_class_names(root) or ClassNames(list(VOC_NAMES), None, root / "SegmentationClass")
    return DataSource(root, "voc", split, names)


# ---------------------------------------------------------------------------------------------- COCO


class CocoMasks:
    """Semantic masks from one COCO instances file: value k+1 for the k-th chosen category, 0 background.

    Instances of one category are united; where categories overlap, larger instances are painted
    first so smaller ones stay visible. Crowd regions (`iscrowd: 1`) are painted 255 (ignored) first,
    so that a labelled instance inside a crowd keeps its label: a crowd is neither a trustworthy
    positive nor a negative.
    """

    def __init__(self, path: Path, categories: list[str] | None = None) -> None:
        try:
            from pycocotools.coco import COCO
        except ImportError:
            raise SegwiseError(
                f"{path}: COCO annotations need pycocotools; pip install 'segwise[coco]'"
            ) from None
        import contextlib
        import io

        self.path = path
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints progress lines
            try:
                self.coco = COCO(str(path))
            except Exception as error:  # malformed files fail inside pycocotools with bare errors
                raise SegwiseError(
                    f"{path}: not a usable COCO file ({type(error).__name__}: {error}); fix or remove it"
                ) from None
        cats = sorted(self.coco.loadCats(self.coco.getCatIds()), key=lambda c: c["id"])
        if categories:
            by_name = {c["name"]: c for c in cats}
            unknown = [n for n in categories if n not in by_name]
            if unknown:
                raise SegwiseError(
                    f"{path}: categories {unknown} are not in the file; choose from {sorted(by_name)}"
                )
            cats = [by_name[n] for n in categories]
        self.value_of = {c["id"]: i + 1 for i, c in enumerate(cats)}
        self.names = ["background"] + [c["name"] for c in cats]
        self.by_name = {Path(img["file_name"]).name: img for img in self.coco.dataset.get("images", [])}

    def mask(self, image_path: Path) -> np.ndarray:
        info = self.by_name[image_path.name]
        mask = np.zeros((info["height"], info["width"]), np.uint8)
        annotations = self.coco.loadAnns(self.coco.getAnnIds(imgIds=info["id"], iscrowd=None))
        annotations = [a for a in annotations if a["category_id"] in self.value_of]
        for a in sorted(annotations, key=lambda a: (not a.get("iscrowd", 0), -a.get("area", 0))):
            try:
                region = self.coco.annToMask(a).astype(bool)
            except Exception as error:  # pycocotools raises bare KeyError/TypeError/ValueError on bad entries
                raise SegwiseError(
                    f"{self.path}: annotation {a.get('id')} of {image_path.name} cannot be drawn "
                    f"({type(error).__name__}: {error}); fix its segmentation"
                ) from None
            mask[region] = 255 if a.get("iscrowd", 0) else self.value_of[a["category_id"]]
        return mask


def _coco_files(root: Path) -> list[Path]:
    candidates = sorted((root / "annotations").glob("*.json")) + sorted(root.glob("*.json"))
    found = []
    for path in candidates:
        try:
            head = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if isinstance(head, dict) and {"images", "annotations", "categories"} <= set(head):
            found.append(path)
    return found


def _coco(root: Path, problems: list[Problem], categories: list[str] | None = None) -> DataSource | None:
    files = _coco_files(root)
    if not files:
        return None
    pairs: dict[str, list[Pair]] = {}
    coco: dict[Path, CocoMasks] = {}
    names: list[str] | None = None
    for path in files:
        split = next((v for k, v in SPLIT_ALIASES.items() if k in path.stem.lower()), "all")
        masks = coco[path] = CocoMasks(path, categories)
        if names is not None and masks.names != names:
            raise SegwiseError(f"{path}: its categories differ from {files[0].name}'s; use one category list")
        names = masks.names
        folders = [root / "images" / split, root / split, root / "images", root]
        folders += [root / path.stem.split("_")[-1], root / "images" / path.stem.split("_")[-1]]
        for file_name in sorted(masks.by_name):
            image = next((f / file_name for f in folders if (f / file_name).is_file()), None)
            if image is None:
                problems.append(
                    Problem(path, "unmatched mask", f"annotates {file_name}, which is not in {root}/images")
                )
            else:
                pairs.setdefault(split, []).append((image, path))
    return DataSource(root, "coco", pairs, ClassNames(names or [], None, files[0]), coco=coco)


def _tree(root: Path, problems: list[Problem], overrides: Overrides | None = None) -> DataSource | None:
    """Whatever no named layout describes: image and mask folders found by discovery, following the
    explicit `overrides` where given."""
    found = discover(root, overrides)
    if found is None:
        return None
    problems += [
        Problem(path, "unmatched mask", "mask without an image; add the image or remove the mask")
        for path in found.unmatched
    ]
    problems += [
        Problem(path, "unmatched image", "no mask pairs with this image; add its mask or remove the image")
        for path in found.unpaired
    ]
    names = _parse_class_file(found.class_file) if found.class_file else None
    source = DataSource(root, "tree", found.pairs, names, decisions=found.decisions, roi=found.roi)
    source.pairs = _apply_lists(root, source.pairs, problems)
    return source


DETECTORS = {"coco": _coco, "voc": _voc, "segnet": _segnet, "fastai": _fastai, "folders": _folders}
DETECTORS |= {"tree": _tree}


def find_data(
    root: str | Path,
    layout: str = "auto",
    categories: list[str] | None = None,
    overrides: Overrides | None = None,
) -> DataSource:
    """Find the pairs of the dataset in `root` (see the module docstring); problems are collected.
    Explicit `overrides` (folders, mask pattern, mask set, region of interest) are read by the tree
    layout, which they imply."""
    root = Path(root)
    if layout not in LAYOUTS:
        raise SegwiseError(f"layout {layout!r} is not known; choose from {list(LAYOUTS)}")
    if not root.exists():
        raise SegwiseError(f"{root}: dataset folder not found; check the path")
    if not root.is_dir():
        raise SegwiseError(f"{root}: not a folder; pass a folder holding images/ and masks/")
    if overrides:
        if layout not in ("auto", "tree"):
            raise SegwiseError(
                f"--layout {layout} does not read --images, --masks, --mask-pattern, --mask-set or --roi; "
                "leave --layout out (they imply the tree layout)"
            )
        source = _tree(root, problems := [], overrides)
        if source is None:
            raise SegwiseError(f"{root}: no images found with the folders given; check --images and --masks")
        source.problems = problems
    else:
        source = _detect(root, layout, categories)
    if not _trainable(source):
        raise SegwiseError(f"{root}: no training images found (.png, .jpg, .tif, .bmp); add image/mask pairs")
    return source


def _trainable(source: DataSource) -> list[Pair]:
    return source.pairs.get("train", source.pairs.get("all", []))


def _detect(root: Path, layout: str, categories: list[str] | None) -> DataSource:
    """The first layout that fits (or the named one), with its problems. In auto mode, a layout whose
    folder names fit but that finds no masks folder or no training pairs gives way to discovery."""
    problems: list[Problem] = []
    for name, detect in DETECTORS.items():
        if layout not in ("auto", name):
            continue
        try:
            source = detect(root, problems, categories) if name == "coco" else detect(root, problems)
        except _NoMasksFolder as error:
            if layout != "auto":
                raise
            found = _tree(root, tree_problems := [])
            if found is None:
                raise error from None
            source, problems = found, tree_problems
        if source is not None and layout == "auto" and name != "tree" and not _trainable(source):
            found = _tree(root, tree_problems := [])
            if found is not None and _trainable(found):
                source, problems = found, tree_problems
        if source is not None:
            source.problems = problems
            return source
    if layout != "auto":
        raise SegwiseError(f"{root}: does not look like a {layout} dataset; {_layout_help(layout)}")
    raise SegwiseError(
        f"{root}: no images/ folder; expected {root}/images + {root}/masks "
        f"(optionally with train/ and val/ subfolders) or {root}/train/images + {root}/train/masks, "
        "or another layout (`segwise check --help` lists them)"
    )


def _layout_help(layout: str) -> str:
    doc = __doc__.split("Layouts")[1]
    line = next(line for line in doc.splitlines() if line.strip().startswith(layout + " "))
    return "expected " + line.strip()[len(layout) :].strip()


def find_pairs(root: str | Path, layout: str = "auto") -> dict[str, list[Pair]]:
    """Return {split: [(image, mask), ...]}; split is 'train', 'val', 'test' or 'all' (no split on disk).

    A dataset with problems (see `DataSource.problems`) is refused with the first one.
    """
    source = find_data(root, layout)
    source.check()
    return source.pairs
