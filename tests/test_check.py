"""`segwise check`: a broken fixture with one of each problem planted is reported exactly."""

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segwise.data.check import check_data
from segwise.errors import SegwiseError

from .conftest import run_cli
from .test_data import SHARED, needs_shared
from .test_layouts import WRITERS, coco


def _pair(root: Path, split: str, stem: str, mask: np.ndarray, image_suffix: str = ".png") -> None:
    for kind in ("images", "masks"):
        (root / split / kind).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(len(stem))
    image = rng.integers(0, 255, (*mask.shape, 3), dtype=np.uint8)
    Image.fromarray(image).save(root / split / "images" / f"{stem}{image_suffix}")
    Image.fromarray(mask.astype(np.uint8)).save(root / split / "masks" / f"{stem}.png")


def _mask(*values: int, size=(16, 24)) -> np.ndarray:
    mask = np.zeros(size, np.uint8)
    for index, value in enumerate(values):
        mask[:, index * 4 : index * 4 + 4] = value
    return mask


def clean_dataset(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    for index in range(3):
        _pair(root, "train", f"t{index}", _mask(0, 1, 2))
    for index in range(2):
        _pair(root, "val", f"v{index}", _mask(0, 1, 2, 255))
    return root


def broken_dataset(root: Path) -> tuple[Path, set[tuple[str, str]]]:
    """A dataset with each kind of problem planted once; returns the expected (kind, file name) set."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "classes.txt").write_text("background\ncat\ndog\n")
    for index in range(3):
        _pair(root, "train", f"t{index}", _mask(0, 1, 2))
    _pair(root, "val", "v0", _mask(0, 1))  # dog absent from val
    _pair(root, "train", "orphan", _mask(0, 1))
    (root / "train" / "masks" / "orphan.png").unlink()  # image without mask
    Image.fromarray(_mask(0, 1)).save(root / "train" / "masks" / "ghost.png")  # mask without image
    _pair(root, "train", "big", _mask(0, 1))
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(root / "train" / "masks" / "big.png")  # size
    _pair(root, "train", "weird", _mask(0, 1, 7))  # value 7: no class
    _pair(root, "train", "broken", _mask(0, 1))
    (root / "train" / "images" / "broken.png").write_bytes(b"\x89PNG not really")  # unreadable
    _pair(root, "train", "dup", _mask(0, 2))
    _pair(root, "train", "dup", _mask(0, 2), image_suffix=".jpg")  # images/dup.jpg and images/dup.png
    expected = {
        ("unmatched image", "orphan.png"),
        ("unmatched mask", "ghost.png"),
        ("size mismatch", "big.png"),
        ("unexpected values", "classes.txt"),  # value 7 in weird.png: beyond the names, as training says
        ("unreadable", "broken.png"),
        ("duplicate stem", "dup.png"),
        ("class absent", root.name),
    }
    return root, expected


def test_clean_dataset_has_no_problems_and_a_summary(tmp_path):
    report = check_data(clean_dataset(tmp_path))
    assert report.problems == [] and report.exit_code == 0
    assert report.pairs_per_split == {"train": 3, "val": 2}
    assert report.sizes == {(16, 24): 5} and report.channels == {3: 5}
    assert report.classes.names == ["background", "cat", "dog"] and report.classes.ignore_value == 255
    # train: each mask 16×24 = 384 pixels, columns 0-3 cat, 4-7 dog... (value i in columns 4i..4i+3)
    assert report.pixels["train"] == [3 * 16 * 16, 3 * 16 * 4, 3 * 16 * 4]
    assert report.void_pixels["val"] == 2 * 16 * 4
    text = report.text()
    assert "no problems found" in text and "dog" in text and "(void/ignored)" in text


def test_broken_dataset_reports_every_planted_problem_and_nothing_else(tmp_path):
    root, expected = broken_dataset(tmp_path)
    report = check_data(root)
    found = {(p.kind, p.path.name) for p in report.problems}
    assert found == expected
    assert len(report.problems) == len(expected)
    absent = next(p for p in report.problems if p.kind == "class absent")
    assert "'dog'" in absent.message and "val" in absent.message
    assert report.exit_code == 1


def test_check_cli_exit_codes_0_clean_1_problems_2_unusable(tmp_path):
    clean = run_cli("check", str(clean_dataset(tmp_path / "clean")))
    assert clean.returncode == 0, clean.stderr
    assert "no problems found" in clean.stdout and "pairs:" in clean.stdout
    broken_root, expected = broken_dataset(tmp_path / "broken")
    broken = run_cli("check", str(broken_root))
    assert broken.returncode == 1, broken.stderr
    for _kind, name in expected:
        assert name in broken.stdout
    assert "Traceback" not in broken.stderr
    unusable = run_cli("check", str(tmp_path / "missing"))
    assert unusable.returncode == 2 and "Traceback" not in unusable.stderr
    assert "dataset folder not found" in unusable.stderr


def test_colour_coded_masks_without_a_table_make_the_data_unusable(tmp_path):
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for stem in ("a", "b"):
        Image.new("RGB", (8, 8)).save(tmp_path / "images" / f"{stem}.png")
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / "masks" / f"{stem}.png")
    with pytest.raises(SegwiseError, match="no colour table; add class_dict.csv"):
        check_data(tmp_path)


def test_soft_edged_binary_masks_are_flagged_per_file(tmp_path):
    for index in range(4):
        mask = np.zeros((40, 40), np.uint8)
        mask[:, 20:] = 255
        if index == 2:
            mask[:, 20] = 128  # an anti-aliased edge in one file
        _pair(tmp_path, "train", f"s{index}", mask)
    report = check_data(tmp_path)
    assert report.classes.values == [0, 255]
    assert [(p.kind, p.path.name) for p in report.problems] == [("unexpected values", "s2.png")]


@pytest.mark.parametrize("write", WRITERS, ids=lambda w: w.__name__)
def test_every_layout_fixture_checks_clean(tmp_path, write):
    write(tmp_path)
    report = check_data(tmp_path, categories=["cat", "dog"] if write is coco else None)
    assert report.problems == [], report.text()
    assert report.classes.names == ["background", "cat", "dog"]
    assert sum(report.pairs_per_split.values()) == 4


def test_multilabel_folders_check_per_class_shares(tmp_path):
    for index in range(3):
        (tmp_path / "images").mkdir(exist_ok=True)
        Image.new("RGB", (10, 10)).save(tmp_path / "images" / f"s{index}.png")
        for name, columns in (("road", 5), ("car", 2), ("sky", 1)):
            mask = np.zeros((10, 10), np.uint8)
            mask[:, :columns] = 255
            (tmp_path / "masks" / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(mask).save(tmp_path / "masks" / name / f"s{index}.png")
    report = check_data(tmp_path)
    assert report.classes.multilabel and report.classes.names == ["car", "road", "sky"]
    assert report.pixels["all"] == [60, 150, 30] and report.problems == []


@needs_shared
def test_camvid11_checks_clean_with_void_share():
    report = check_data(SHARED / "camvid11")
    assert report.problems == [] and report.pairs_per_split == {"train": 367, "val": 101}
    assert report.classes.num_classes == 11 and report.void_pixels["train"] > 0
