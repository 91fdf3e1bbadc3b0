from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segwise.constants import IGNORE_INDEX
from segwise.data import find_pairs, load_data
from segwise.data.dataset import discover_classes
from segwise.data.synthetic import CLASS_NAMES, synthetic_sample, write_synthetic_dataset
from segwise.errors import SegwiseError

from .conftest import write_pair


def test_flat_layout_is_split_by_seed_and_reproducibly(tmp_path):
    for index in range(10):
        write_pair(tmp_path, f"s{index}")
    first = load_data(tmp_path, val_fraction=0.3, seed=1)
    second = load_data(tmp_path, val_fraction=0.3, seed=1)
    assert len(first.train_images) == 7 and len(first.val_images) == 3
    assert first.val_pairs == second.val_pairs
    assert set(first.train_pairs).isdisjoint(first.val_pairs)
    assert sorted(first.train_pairs + first.val_pairs) == find_pairs(tmp_path)["all"]


@pytest.mark.parametrize("layout", ["split_inside", "split_outside"])
def test_train_and_val_subfolders_are_used_as_given(tmp_path, layout):
    for split, count in (("train", 4), ("val", 2)):
        for index in range(count):
            if layout == "split_inside":  # DATA/train/images
                write_pair(tmp_path / split, f"{split}{index}")
            else:  # DATA/images/train
                write_pair(tmp_path, f"{split}{index}")
                for kind in ("images", "masks"):
                    (tmp_path / kind / split).mkdir(exist_ok=True)
                    (tmp_path / kind / f"{split}{index}.png").rename(
                        tmp_path / kind / split / f"{split}{index}.png"
                    )
    data = load_data(tmp_path)
    assert len(data.train_images) == 4 and len(data.val_images) == 2
    assert all(p[0].stem.startswith("val") for p in data.val_pairs)


def test_pairs_match_by_stem_across_image_formats(tmp_path):
    write_pair(tmp_path, "photo", image_suffix=".jpg")
    write_pair(tmp_path, "other")
    pairs = find_pairs(tmp_path)["all"]
    assert [(i.name, m.name) for i, m in pairs] == [("other.png", "other.png"), ("photo.jpg", "photo.png")]


def test_binary_0_255_masks_become_two_classes(tmp_path):
    for index in range(4):
        write_pair(tmp_path, f"b{index}", mask_values=(0, 255))
    data = load_data(tmp_path)
    assert data.classes.values == [0, 255] and data.classes.num_classes == 2
    assert set(np.unique(data.train_masks)) == {0, 1}


def test_index_masks_with_255_treat_it_as_void(tmp_path):
    for index, values in enumerate([(0, 2), (1, 255), (3, 0)]):
        write_pair(tmp_path, f"v{index}", mask_values=values)
    data = load_data(tmp_path, val_fraction=0.34)
    assert data.classes.num_classes == 4 and data.classes.ignore_value == 255
    masks = np.concatenate([data.train_masks.ravel(), data.val_masks.ravel()])
    assert set(np.unique(masks)) == {0, 1, 2, 3, IGNORE_INDEX}


def test_far_apart_gray_values_become_consecutive_classes():
    classes = discover_classes({0, 128, 200})
    assert classes.values == [0, 128, 200] and classes.num_classes == 3


def test_classes_txt_names_the_classes(shapes_data):
    data = load_data(shapes_data)
    assert data.classes.names == CLASS_NAMES


def test_typical_size_is_kept_when_all_images_share_it(tmp_path):
    for index in range(3):
        write_pair(tmp_path, f"s{index}", size=(33, 47))
    assert load_data(tmp_path).size == (33, 47)


def test_explicit_size_resizes_images_and_masks(tmp_path):
    for index in range(3):
        write_pair(tmp_path, f"s{index}", size=(33, 47))
    data = load_data(tmp_path, size=(64, 96))
    assert data.train_images.shape[1:3] == (64, 96) and data.train_masks.shape[1:] == (64, 96)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(SegwiseError, match="dataset folder not found"):
        load_data(tmp_path / "nope")


def test_image_without_mask_names_the_image(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    (tmp_path / "masks" / "b.png").unlink()
    with pytest.raises(SegwiseError, match=r"b\.png: no mask with the same name"):
        load_data(tmp_path)


def test_mask_of_another_size_names_the_mask(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    Image.new("L", (10, 10)).save(tmp_path / "masks" / "b.png")
    with pytest.raises(SegwiseError, match=r"masks/b\.png: mask is 10×10 but its image b\.png is 50×40"):
        load_data(tmp_path)


def test_unreadable_image_names_the_file(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    (tmp_path / "images" / "b.png").write_bytes(b"\x89PNG garbage")
    with pytest.raises(SegwiseError, match=r"images/b\.png: cannot read image"):
        load_data(tmp_path)


def test_duplicate_stems_are_refused(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "a", image_suffix=".jpg")
    with pytest.raises(SegwiseError, match="share the stem 'a'"):
        find_pairs(tmp_path)


def test_synthetic_dataset_is_deterministic_by_seed(tmp_path):
    first = write_synthetic_dataset(tmp_path / "a", num_train=3, num_val=1, num_test=0, size=48, seed=5)
    second = write_synthetic_dataset(tmp_path / "b", num_train=3, num_val=1, num_test=0, size=48, seed=5)
    for path in sorted(first.rglob("*.png")):
        assert path.read_bytes() == (second / path.relative_to(first)).read_bytes()


def test_synthetic_samples_hold_several_classes_and_binary_variant_is_0_1():
    classes_seen = set()
    for seed in range(6):
        image, mask = synthetic_sample(seed, 64)
        assert image.shape == (64, 64, 3) and mask.shape == (64, 64)
        classes_seen |= set(np.unique(mask).tolist())
        _, binary = synthetic_sample(seed, 64, binary=True)
        assert set(np.unique(binary)) <= {0, 1} and np.array_equal(binary, mask > 0)
    assert classes_seen == {0, 1, 2, 3, 4}


SHARED = Path(__file__).parents[2] / "shared/datasets"
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"real datasets not found at {SHARED} (only on the development machine)"
)


@needs_shared
def test_camvid11_loads_as_11_classes_with_void_ignored_and_names_from_class_dict():
    data = load_data(SHARED / "camvid11", size=(64, 96))
    assert data.classes.names == [
        "Sky", "Building", "Pole", "Road", "Pavement", "Tree",
        "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist",
    ]  # fmt: skip
    assert data.classes.values == list(range(11)) and data.classes.ignore_value == 11
    assert data.classes.palette[0] == [128, 128, 128]  # colours from class_dict.csv
    assert len(data.train_images) == 367 and len(data.val_images) == 101
    # Void pixels (stored 11) became the ignore index; no other value is outside 0..10.
    assert set(np.unique(data.train_masks)) <= set(range(11)) | {IGNORE_INDEX}
    assert (data.train_masks == IGNORE_INDEX).any()


@needs_shared
def test_isbi2012_loads_as_binary_one_channel():
    data = load_data(SHARED / "isbi2012", size=(64, 64))
    assert data.in_channels == 1 and data.train_images.shape[-1] == 1
    assert data.classes.num_classes == 2 and data.classes.values == [0, 255]
    assert data.classes.ignore_value is None
    assert set(np.unique(data.train_masks)) == {0, 1}


def test_class_dict_csv_void_row_is_ignored_wherever_it_is(tmp_path):
    for index in range(3):
        write_pair(tmp_path, f"s{index}", mask_values=(0, 2))
    (tmp_path / "class_dict.csv").write_text("name,r,g,b\nsky,1,2,3\nunlabelled,0,0,0\nroad,9,9,9\n")
    data = load_data(tmp_path)
    assert data.classes.names == ["sky", "road"] and data.classes.values == [0, 2]
    assert data.classes.ignore_value == 1 and data.classes.palette == [[1, 2, 3], [9, 9, 9]]
    assert set(np.unique(data.train_masks)) == {0, 1}


def test_codes_txt_names_the_classes(tmp_path):
    for index in range(3):
        write_pair(tmp_path, f"s{index}", mask_values=(0, 2))
    (tmp_path / "codes.txt").write_text("a\nb\nc\n")
    assert load_data(tmp_path).classes.names == ["a", "b", "c"]


def test_malformed_class_dict_names_the_line(tmp_path):
    write_pair(tmp_path, "a")
    write_pair(tmp_path, "b")
    (tmp_path / "class_dict.csv").write_text("name,r,g,b\nsky,1,2\n")
    with pytest.raises(SegwiseError, match=r"class_dict\.csv: line 2"):
        load_data(tmp_path)


def test_class_dict_with_a_byte_order_mark_is_read(tmp_path):
    for index in range(3):
        write_pair(tmp_path, f"s{index}", mask_values=(0, 1))
    (tmp_path / "class_dict.csv").write_text("\ufeffname,r,g,b\nsky,1,2,3\nroad,4,5,6\n", encoding="utf-8")
    assert load_data(tmp_path).classes.names == ["sky", "road"]
