"""Discovery (layout "tree"): datasets as people download them, generated here as tiny trees."""

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segwise.data import load_data
from segwise.data.check import check_data
from segwise.data.formats import find_data
from segwise.data.overrides import MaskPattern, Overrides, folders_of
from segwise.errors import SegwiseError

H, W = 24, 32


def photo(seed: int, channels: int = 3) -> np.ndarray:
    shape = (H, W, channels) if channels > 1 else (H, W)
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def vessels(seed: int) -> np.ndarray:
    """A thin 0/255 structure: a few lines covering a small share of the image."""
    mask = np.zeros((H, W), np.uint8)
    mask[4 + seed % 5, :] = 255
    mask[:, 6 + seed % 7] = 255
    return mask


def field_of_view() -> np.ndarray:
    """A disc covering most of the image: the region a camera sees, not a label."""
    yy, xx = np.mgrid[0:H, 0:W]
    return np.where(
        (yy - H / 2) ** 2 / (H / 1.6) ** 2 + (xx - W / 2) ** 2 / (W / 1.6) ** 2 <= 1, 255, 0
    ).astype(np.uint8)


def save(array: np.ndarray, path: Path, **options) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **options)
    return path


def retina(root: Path) -> None:  # DRIVE
    for split, ids, word in (("training", (21, 22, 23), "training"), ("test", (1, 2), "test")):
        for number in ids:
            stem = f"{number:02d}_{word}"
            save(photo(number), root / split / "images" / f"{stem}.tif")
            save(vessels(number), root / split / "1st_manual" / f"{number:02d}_manual1.gif")
            save(field_of_view(), root / split / "mask" / f"{stem}_mask.gif")
            if split == "test":
                save(vessels(number + 1), root / split / "2nd_manual" / f"{number:02d}_manual2.gif")


def one_bit(mask: np.ndarray) -> np.ndarray:
    return mask > 0  # Pillow saves a boolean array as a 1-bit PNG (mode "1")


def two_annotators(root: Path) -> None:  # CHASE_DB1: 1-bit PNG masks
    for index, side in enumerate(("01L", "01R", "02L")):
        save(photo(index), root / f"Image_{side}.jpg", quality=95)
        save(one_bit(vessels(index)), root / f"Image_{side}_1stHO.png")
        save(one_bit(vessels(index + 3)), root / f"Image_{side}_2ndHO.png")


def horse_mask(index: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[6 : 16 + index, 4:26] = 255
    return mask


def horses(root: Path) -> None:  # Weizmann horses
    for index in range(3):
        stem = f"horse{index + 1:03d}"
        save(photo(index), root / "rgb" / f"{stem}.jpg", quality=95)
        save(photo(index, 1), root / "gray" / f"{stem}.jpg", quality=95)
        save(horse_mask(index), root / "figure_ground" / f"{stem}.jpg", quality=90)


CAMVID_COLOURS = {"Sky": (128, 128, 128), "Road": (128, 64, 128), "Car": (64, 0, 128), "Void": (0, 0, 0)}


def camvid_mask(index: int) -> np.ndarray:
    """Class values 0 Sky, 1 Road, 2 Car, 3 Void in bands."""
    mask = np.zeros((H, W), np.uint8)
    mask[8:16] = 1
    mask[16:] = 2
    mask[:, : 2 + index] = 3
    return mask


def camvid(root: Path, nested: bool = True) -> None:  # Kaggle CamVid: train/ + train_labels/ (x_L.png)
    """The split folders and class_dict.csv in CamVid/, or the split folders at the root (`nested=False`)."""
    table = np.array(list(CAMVID_COLOURS.values()), np.uint8)
    base = root / "CamVid" if nested else root
    for split, count in (("train", 3), ("val", 2), ("test", 1)):
        for index in range(count):
            stem = f"0001TP_{split}{index:03d}"
            save(photo(index), base / split / f"{stem}.png")
            save(table[camvid_mask(index)], base / f"{split}_labels" / f"{stem}_L.png")
    rows = [f"{name},{r},{g},{b}" for name, (r, g, b) in CAMVID_COLOURS.items()]
    (root / "CamVid").mkdir(exist_ok=True)
    (root / "CamVid" / "class_dict.csv").write_text("name,r,g,b\n" + "\n".join(rows) + "\n")


def isic(root: Path) -> None:  # ISIC 2018: unusual folder names, `_segmentation` masks
    for split, count in (("Training", 3), ("Validation", 2)):
        for index in range(count):
            stem = f"ISIC_{split[0]}{index:06d}"
            save(photo(index), root / f"ISIC2018_Task1-2_{split}_Input" / f"{stem}.jpg", quality=95)
            save(horse_mask(index), root / f"ISIC2018_Task1_{split}_GroundTruth" / f"{stem}_segmentation.png")


def carvana(root: Path) -> None:  # Kaggle Carvana: train/x.jpg ↔ train_masks/x_mask.gif
    for index in range(3):
        stem = f"0cdf5b5d0ce1_{index + 1:02d}"
        save(photo(index), root / "train" / f"{stem}.jpg", quality=95)
        save(horse_mask(index), root / "train_masks" / f"{stem}_mask.gif")


def by_content(root: Path) -> None:  # folders named nothing in particular: the masks are palette PNGs
    for index in range(3):
        save(photo(index), root / "frames" / f"f{index}.png")
        mask = Image.fromarray((horse_mask(index) > 0).astype(np.uint8), "L").convert("P")
        mask.putpalette([0, 0, 0, 255, 0, 0] + [0] * 762)
        (root / "out").mkdir(exist_ok=True)
        mask.save(root / "out" / f"f{index}.png")


def stems(pairs) -> list[tuple[str, str]]:
    return [(image.name, mask.name) for image, mask in pairs]


def test_retina_vessels_pair_with_the_first_annotator_and_reject_the_field_of_view(tmp_path):
    retina(tmp_path)
    source = find_data(tmp_path)
    assert source.layout == "tree" and sorted(source.pairs) == ["test", "train"]
    assert stems(source.pairs["train"]) == [(f"{n}_training.tif", f"{n}_manual1.gif") for n in (21, 22, 23)]
    assert stems(source.pairs["test"]) == [(f"0{n}_test.tif", f"0{n}_manual1.gif") for n in (1, 2)]
    decisions = "\n".join(source.decisions)
    assert "training/mask/: one large region per image: a region of interest" in decisions
    assert "test/2nd_manual/: annotator 2; annotator 1 is preferred" in decisions
    assert find_data(tmp_path, layout="tree").pairs == source.pairs
    data = load_data(tmp_path, val_fraction=0.34, use_cache=False)
    assert data.mode == "binary" and data.classes.num_classes == 2
    assert len(data.train_pairs) == 2 and len(data.val_pairs) == 1 and len(data.test_pairs) == 2
    np.testing.assert_array_equal(data.train_masks[0], vessels(21) // 255)


def test_flat_folder_with_two_annotators_takes_the_first(tmp_path):
    two_annotators(tmp_path)
    source = find_data(tmp_path)
    assert source.layout == "tree"
    assert stems(source.pairs["all"]) == [
        (f"Image_{s}.jpg", f"Image_{s}_1stHO.png") for s in ("01L", "01R", "02L")
    ]
    assert any("rejected *_2ndHO" in line for line in source.decisions)
    assert Image.open(source.pairs["all"][0][1]).mode == "1"
    data = load_data(tmp_path, val_fraction=0.34, use_cache=False)
    assert data.mode == "binary" and len(data.train_pairs) == 2
    sides = {f"Image_{side}.jpg": index for index, side in enumerate(("01L", "01R", "02L"))}
    masks = np.concatenate([data.train_masks, data.val_masks])
    for mask, (image, _) in zip(masks, data.train_pairs + data.val_pairs, strict=True):
        np.testing.assert_array_equal(mask, vessels(sides[image.name]) // 255)  # the first annotator's


def test_sibling_image_folders_prefer_colour_and_jpeg_masks_are_thresholded(tmp_path):
    horses(tmp_path)
    source = find_data(tmp_path)
    assert [image.parent.name for image, _ in source.pairs["all"]] == ["rgb"] * 3
    assert [mask.parent.name for _, mask in source.pairs["all"]] == ["figure_ground"] * 3
    assert any("rejected images gray/: 1 channel(s) where rgb/ has 3" in line for line in source.decisions)
    data = load_data(tmp_path, val_fraction=0.34, use_cache=False)
    assert data.mode == "binary" and data.classes.threshold == 128 and data.in_channels == 3
    masks = np.concatenate([data.train_masks, data.val_masks])
    pairs = data.train_pairs + data.val_pairs
    for mask, (image, _) in zip(masks, pairs, strict=True):
        np.testing.assert_array_equal(mask, horse_mask(int(image.stem[-3:]) - 1) // 255)


@pytest.mark.parametrize("nested", [True, False], ids=["all_in_CamVid", "splits_at_the_root"])
def test_split_folders_with_label_folders_use_a_colour_table_found_in_a_subfolder(tmp_path, nested):
    camvid(tmp_path, nested)
    source = find_data(tmp_path)
    assert source.layout == "tree" and sorted(source.pairs) == ["test", "train", "val"]
    assert source.pairs["train"][0][0].parent == (tmp_path / "CamVid" if nested else tmp_path) / "train"
    assert stems(source.pairs["val"]) == [
        (f"0001TP_val{i:03d}.png", f"0001TP_val{i:03d}_L.png") for i in range(2)
    ]
    assert source.class_names.path == tmp_path / "CamVid" / "class_dict.csv"
    data = load_data(tmp_path, use_cache=False)
    assert data.classes.names == ["Sky", "Road", "Car"] and data.mode == "multiclass"
    assert data.classes.ignore_value == 3
    expected = np.where(camvid_mask(0) == 3, 255, camvid_mask(0))
    np.testing.assert_array_equal(data.train_masks[0], expected)


@pytest.mark.parametrize(
    "write, splits, first",
    [
        (isic, {"train": 3, "val": 2}, ("ISIC_T000000.jpg", "ISIC_T000000_segmentation.png")),
        (carvana, {"train": 3}, ("0cdf5b5d0ce1_01.jpg", "0cdf5b5d0ce1_01_mask.gif")),
        (by_content, {"all": 3}, ("f0.png", "f0.png")),
    ],
    ids=lambda v: getattr(v, "__name__", None),
)
def test_more_naming_schemes(tmp_path, write, splits, first):
    write(tmp_path)
    source = find_data(tmp_path)
    assert source.layout == "tree"
    assert {split: len(pairs) for split, pairs in source.pairs.items()} == splits
    assert stems(source.pairs[next(iter(splits))])[0] == first
    data = load_data(tmp_path, val_fraction=0.34, use_cache=False)
    assert data.mode == "binary"


def test_two_equally_plausible_mask_sets_stop_with_the_choices_and_the_flag(tmp_path):
    for index in range(2):
        save(photo(index), tmp_path / "photos" / f"p{index}.jpg")
        save(horse_mask(index), tmp_path / "coarse_labels" / f"p{index}.png")
        save(horse_mask(index + 1), tmp_path / "fine_labels" / f"p{index}.png")
    with pytest.raises(SegwiseError) as error:
        find_data(tmp_path)
    message = str(error.value)
    assert "\n" not in message
    assert "coarse_labels/ (same stem)" in message and "fine_labels/ (same stem)" in message
    assert message.endswith("choose one with --mask-set (coarse_labels or fine_labels)")
    chosen = find_data(tmp_path, overrides=Overrides(mask_set="fine_labels"))
    assert [mask.parent.name for _, mask in chosen.pairs["all"]] == ["fine_labels"] * 2


def test_nothing_pairable_names_the_nearest_miss(tmp_path):
    for number in (21, 22, 23):
        save(photo(number), tmp_path / "images" / f"{number}_training.tif")
    for number in (21, 22):
        save(vessels(number), tmp_path / "1st_manual" / f"{number}_manual1.gif")
    with pytest.raises(SegwiseError) as error:
        find_data(tmp_path)
    message = str(error.value)
    assert "images `21_training.tif` and masks `21_manual1.gif` share the leading ID `21`" in message
    assert "only 2 of 3 images" in message and "`23_training.tif`" in message
    assert "pass --mask-pattern '{id}_manual1.gif'" in message
    # ... and the flag it names pairs them, the image without a mask becoming a problem
    source = find_data(tmp_path, overrides=Overrides(mask_pattern="{id}_manual1.gif"))
    assert stems(source.pairs["all"]) == [(f"{n}_training.tif", f"{n}_manual1.gif") for n in (21, 22)]
    assert [(p.path.name, p.kind) for p in source.problems] == [("23_training.tif", "unmatched image")]


def near_miss_tree(root: Path) -> None:
    for number in (21, 22, 23):
        save(photo(number), root / "images" / f"{number}_training.tif")
        save(vessels(number), root / "1st_manual" / f"{number}_manual1.gif")
        save(vessels(number + 1), root / "1st_manual" / f"{number}_manual1_rev.gif")


@pytest.mark.parametrize(
    "pattern", ["{id}_manual1.gif", r"(?P<id>\d+)_manual1\.gif", "{id}_manual1", r"(?P<stem>\d+)_manual1_rev"]
)
def test_a_mask_pattern_as_template_or_regex_says_which_files_are_masks(tmp_path, pattern):
    near_miss_tree(tmp_path)
    if "stem" in pattern:  # the stem group names a mask by the image's whole stem: no image is `21`
        with pytest.raises(
            SegwiseError, match=r"no mask fits --mask-pattern .* \(none for `21_training.tif`\)"
        ):
            find_data(tmp_path, overrides=Overrides(mask_pattern=pattern))
        return
    source = find_data(tmp_path, overrides=Overrides(mask_pattern=pattern))
    suffix = "_rev" if "rev" in pattern else ""
    assert stems(source.pairs["all"]) == [
        (f"{n}_training.tif", f"{n}_manual1{suffix}.gif") for n in (21, 22, 23)
    ]
    assert source.problems == []  # the masks the pattern does not fit are not this set's leftovers
    assert any(f"--mask-pattern {pattern!r}" in line for line in source.decisions)


def test_mask_patterns_read_names_and_refuse_what_cannot_pair(tmp_path):
    by_stem = MaskPattern("{stem}_mask.png")
    assert by_stem.key("x_1_mask.png") == "x_1" and by_stem.key("x_1.png") is None
    assert by_stem.image_key("x_1") == "x_1"
    by_id = MaskPattern("{id}_manual1.gif")
    assert by_id.key("21_manual1.gif") == "21" and by_id.image_key("21_training") == "21"
    assert MaskPattern("{stem}_L").key("0001TP_008550_L.png") == "0001TP_008550"  # no suffix: the stem
    for bad, says in (("x_mask.png", "needs exactly one of {stem} or {id}"), ("(?P<stem>[", "not a valid")):
        with pytest.raises(SegwiseError, match=re.escape(says)):
            MaskPattern(bad)


def unnamed_folders(root: Path) -> None:
    """Folders named nothing discovery knows, holding JPEG masks: only explicit folders can pair them."""
    for split, count in (("train", 3), ("val", 2)):
        for index in range(count):
            save(photo(index), root / f"in_{split}" / f"s{index}.jpg", quality=95)
            save(horse_mask(index), root / f"out_{split}" / f"s{index}.jpg", quality=95)


@pytest.mark.parametrize(
    "images, masks",
    [("in_{split}", "out_{split}"), ("train=in_train,val=in_val", "train=out_train,val=out_val")],
    ids=["split_field", "per_split"],
)
def test_explicit_image_and_mask_folders_per_split(tmp_path, images, masks):
    unnamed_folders(tmp_path)
    with pytest.raises(SegwiseError):
        find_data(tmp_path)
    source = find_data(tmp_path, overrides=Overrides(images=images, masks=masks))
    assert {split: len(pairs) for split, pairs in source.pairs.items()} == {"train": 3, "val": 2}
    assert all(mask.parent.name == "out_val" for _, mask in source.pairs["val"])
    data = load_data(tmp_path, use_cache=False, overrides=Overrides(images=images, masks=masks))
    assert data.mode == "binary" and len(data.val_pairs) == 2


def test_explicit_folders_are_checked_and_refuse_other_layouts(tmp_path):
    unnamed_folders(tmp_path)
    with pytest.raises(SegwiseError, match=r"--images 'nowhere': .* is not a folder"):
        find_data(tmp_path, overrides=Overrides(images="nowhere"))
    with pytest.raises(SegwiseError, match=r"--masks 'masks_\{split\}': no folder under .* fits it"):
        folders_of(tmp_path, "masks_{split}", "masks")
    with pytest.raises(SegwiseError, match=r"'fold' is not a split"):
        folders_of(tmp_path, "fold=in_train", "images")
    with pytest.raises(SegwiseError, match=r"--layout voc does not read --images"):
        find_data(tmp_path, layout="voc", overrides=Overrides(images="in_{split}", masks="out_{split}"))


def test_a_region_of_interest_set_makes_its_outside_void(tmp_path):
    retina(tmp_path)
    rejected = "\n".join(find_data(tmp_path).decisions)
    assert "region of interest, not labels (use it as one: --roi mask)" in rejected
    roi = Overrides(roi="mask")
    source = find_data(tmp_path, overrides=roi)
    assert [mask.parent.name for _, mask in source.pairs["train"]] == ["1st_manual"] * 3
    assert {image.name: region.name for image, region in source.roi.items()}[
        "21_training.tif"
    ] == "21_training_mask.gif"
    assert any("region of interest from training/mask/" in line for line in source.decisions)
    data = load_data(tmp_path, val_fraction=0.34, use_cache=False, overrides=roi)
    outside = field_of_view() == 0
    expected = np.where(outside, 255, vessels(21) // 255)
    np.testing.assert_array_equal(data.train_masks[0], expected)
    report = check_data(tmp_path, overrides=roi)
    assert report.void_pixels["train"] == 3 * int(outside.sum()) and report.exit_code == 0
    with pytest.raises(
        SegwiseError,
        match=r"no mask set named 'fov' pairs with the images in test/images/; pass --roi with one of: 1st_manual, 2nd_manual, mask$",
    ):
        find_data(tmp_path, overrides=Overrides(roi="fov"))


def test_most_images_paired_is_enough_and_the_rest_are_problems(tmp_path):
    for index in range(10):
        save(photo(index), tmp_path / "pictures" / f"p{index}.jpg", quality=95)
        if index != 4:
            save(horse_mask(index % 3), tmp_path / "gt" / f"p{index}.png")
    source = find_data(tmp_path)
    assert len(source.pairs["all"]) == 9
    assert [(p.path.name, p.kind) for p in source.problems] == [("p4.jpg", "unmatched image")]
    with pytest.raises(SegwiseError, match=r"p4.jpg: no mask pairs with this image"):
        load_data(tmp_path, use_cache=False)


def test_no_masks_anywhere_keeps_the_folders_error(tmp_path):
    for index in range(2):
        save(photo(index), tmp_path / "test" / "images" / f"x{index}.jpg")
    with pytest.raises(SegwiseError, match=r"test/masks: masks folder not found"):
        find_data(tmp_path)


def test_check_prints_the_rule_and_the_rejected_sets(tmp_path):
    retina(tmp_path)
    text = check_data(tmp_path).text()
    assert "(layout: tree)" in text
    assert "found:    images test/images/: masks from test/1st_manual/ (shared leading ID)" in text
    assert "\n          images training/images/: masks from training/1st_manual/ (shared leading ID)" in text
    assert "rejected training/mask/: one large region per image" in text


def test_a_class_file_is_used_only_when_the_tree_holds_exactly_one(tmp_path):
    camvid(tmp_path)
    (tmp_path / "CamVid" / "train" / "classes.txt").write_text("a\nb\n")
    source = find_data(tmp_path)
    assert source.class_names is None
    assert any("several files" in line for line in source.decisions)


def test_split_folders_under_an_annotations_folder_and_a_layout_without_pairs_give_way(tmp_path):
    """ADE20K: images/training/ + annotations/training/ (no names/ split folders the folders layout knows)."""
    for split, count in (("training", 3), ("validation", 2)):
        for index in range(count):
            stem = f"ADE_{split[:5]}_{index:08d}"
            save(photo(index), tmp_path / "images" / split / f"{stem}.jpg", quality=95)
            save(camvid_mask(index), tmp_path / "annotations" / split / f"{stem}.png")
    source = find_data(tmp_path)
    assert source.layout == "tree" and {s: len(p) for s, p in source.pairs.items()} == {"train": 3, "val": 2}
    assert source.pairs["train"][0][1] == tmp_path / "annotations" / "training" / "ADE_train_00000000.png"


def test_image_folders_sharing_one_mask_folder_keep_their_own_images(tmp_path):
    for index in range(4):
        save(photo(index), tmp_path / ("day" if index < 2 else "night") / f"x{index}.jpg", quality=95)
        save(horse_mask(index), tmp_path / "masks" / f"x{index}.png")
    source = find_data(tmp_path)
    assert [image.parent.name for image, _ in source.pairs["all"]] == ["day", "day", "night", "night"]
    assert source.problems == []


def test_stems_that_pair_two_ways_stop_with_both_rules(tmp_path):
    for index in range(2):
        save(photo(index), tmp_path / "pictures" / f"p{index}.jpg", quality=95)
        save(horse_mask(index), tmp_path / "gt" / f"p{index}.png")
        save(horse_mask(index + 1), tmp_path / "gt" / f"p{index}_gt.png")
    with pytest.raises(
        SegwiseError,
        match=r"gt/ \(same stem\); gt/ \(mask = image \+ '_gt'\); name the masks with --mask-pattern",
    ):
        find_data(tmp_path)


def test_numbered_annotators_zip_leftovers_and_a_loose_labels_file(tmp_path):
    for index in range(2):
        save(photo(index), tmp_path / "img" / f"p{index}.jpg", quality=95)
        for rater in (2, 1):
            save(horse_mask(index + rater), tmp_path / f"annotator_{rater}" / f"p{index}.png")
        save(photo(index), tmp_path / "__MACOSX" / "img" / f"p{index}.jpg", quality=95)
    (tmp_path / "meta").mkdir()
    (tmp_path / "meta" / "labels.txt").write_text("background\nlesion\n")
    source = find_data(tmp_path)
    assert [mask.parent.name for _, mask in source.pairs["all"]] == ["annotator_1"] * 2
    assert source.class_names.names == ["background", "lesion"]
    assert load_data(tmp_path, val_fraction=0.5, use_cache=False).classes.names == ["background", "lesion"]


def test_a_labels_file_listing_the_files_is_no_class_file(tmp_path):
    carvana(tmp_path)
    (tmp_path / "labels.txt").write_text("0cdf5b5d0ce1_01\n0cdf5b5d0ce1_02\n")
    assert find_data(tmp_path).class_names is None


def test_the_tree_layout_can_be_named_for_any_dataset(tmp_path):
    from .test_layouts import split_inside

    split_inside(tmp_path)
    named = find_data(tmp_path, layout="tree")
    assert named.layout == "tree"
    assert named.pairs == find_data(tmp_path).pairs
    assert named.class_names.names == find_data(tmp_path).class_names.names


def test_a_run_on_a_discovered_tree_records_the_layout_and_evaluates_with_it(tmp_path):
    import segwise
    from segwise.evaluate import evaluate_split, split_pairs
    from tests.conftest import TINY

    retina(tmp_path / "data")
    run = segwise.train(
        tmp_path / "data", runs_dir=tmp_path / "runs", epochs=1, progress=False, **TINY
    ).run_dir
    predictor = segwise.load(run)
    plan = predictor.config.data["plan"]
    assert plan["layout"] == "tree"
    pairs, source = split_pairs(tmp_path / "data", "test", plan["layout"], plan["categories"])
    assert [mask.parent.name for _, mask in pairs] == ["1st_manual"] * 2
    evaluation = evaluate_split(predictor, pairs, source=source)
    assert int(evaluation.matrix.matrix.sum()) == 2 * H * W


def test_a_cvat_labelmap_is_a_colour_table(tmp_path):
    camvid(tmp_path, nested=False)
    (tmp_path / "CamVid" / "class_dict.csv").unlink()
    rows = [f"{name}:{r},{g},{b}::" for name, (r, g, b) in CAMVID_COLOURS.items()]
    (tmp_path / "labelmap.txt").write_text("# label:color_rgb:parts:actions\n" + "\n".join(rows) + "\n")
    data = load_data(tmp_path, use_cache=False)
    assert data.classes.names == ["Sky", "Road", "Car"] and data.classes.ignore_value == 3
    assert data.classes.colours[:3] == [list(c) for c in list(CAMVID_COLOURS.values())[:3]]


def test_a_mask_without_an_image_is_a_problem_check_lists(tmp_path):
    carvana(tmp_path)
    save(horse_mask(0), tmp_path / "train_masks" / "stray_mask.gif")
    source = find_data(tmp_path)
    assert [(p.path.name, p.kind) for p in source.problems] == [("stray_mask.gif", "unmatched mask")]
    with pytest.raises(SegwiseError, match="stray_mask.gif: mask without an image"):
        load_data(tmp_path, use_cache=False)
    assert check_data(tmp_path).exit_code == 1


def test_hrf_numbered_manual_folder_beats_its_field_of_view(tmp_path):
    """HRF: images/01_dr.JPG, manual1/01_dr.tif (labels), mask/01_dr_mask.tif (field of view)."""
    for index, kind in enumerate(("dr", "g", "h")):
        save(photo(index), tmp_path / "images" / f"01_{kind}.JPG", quality=95)
        save(vessels(index), tmp_path / "manual1" / f"01_{kind}.tif")
        save(field_of_view(), tmp_path / "mask" / f"01_{kind}_mask.tif")
    source = find_data(tmp_path)
    assert [mask.parent.name for _, mask in source.pairs["all"]] == ["manual1"] * 3
    assert any("rejected mask/: one large region per image" in line for line in source.decisions)
    assert load_data(tmp_path, val_fraction=0.34, use_cache=False).mode == "binary"


def test_overrides_are_recorded_in_the_plan_and_read_again_by_eval_and_check(tmp_path):
    import segwise
    from segwise.evaluate import evaluate_run
    from tests.conftest import TINY, run_cli

    near_miss_tree(tmp_path / "data")
    assert run_cli("check", tmp_path / "data").returncode == 2  # the two mask names leave it ambiguous
    checked = run_cli("check", tmp_path / "data", "--mask-pattern", "{id}_manual1.gif")
    assert checked.returncode == 0, checked.stderr
    assert "masks from 1st_manual/ (--mask-pattern '{id}_manual1.gif')" in checked.stdout
    bad = run_cli("check", tmp_path / "data", "--mask-pattern", "(?P<stem>[")
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1 and "not a valid" in bad.stderr
    run = segwise.train(
        tmp_path / "data",
        runs_dir=tmp_path / "runs",
        epochs=1,
        progress=False,
        mask_pattern="{id}_manual1.gif",
        **TINY,
    ).run_dir
    plan = segwise.load(run).config.data["plan"]
    assert plan["mask_pattern"] == "{id}_manual1.gif" and plan["layout"] == "tree"
    report = evaluate_run(run, tmp_path / "data")  # the held-out image, found through the recorded pattern
    assert report.images == 1


def test_a_cvat_segmentation_mask_export_reads_its_labelmap(tmp_path):
    """CVAT 'Segmentation mask 1.1': VOC folders with RGB-coded masks whose colours labelmap.txt gives."""
    colours = np.array([(0, 0, 0), (250, 50, 83), (51, 221, 255)], np.uint8)
    (tmp_path / "labelmap.txt").write_text(
        "# label:color_rgb:parts:actions\nbackground:0,0,0::\ncar:250,50,83::\nperson:51,221,255::\n"
    )
    for index in range(3):
        save(photo(index), tmp_path / "JPEGImages" / f"frame_{index:06d}.png")
        save(colours[camvid_mask(index) % 3], tmp_path / "SegmentationClass" / f"frame_{index:06d}.png")
    lists = tmp_path / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "default.txt").write_text("\n".join(f"frame_{i:06d}" for i in range(3)) + "\n")
    source = find_data(tmp_path)
    assert source.layout == "voc" and source.class_names.names == ["background", "car", "person"]
    data = load_data(tmp_path, val_fraction=0.34, use_cache=False)
    assert data.classes.names == ["background", "car", "person"] and data.mode == "multiclass"
    np.testing.assert_array_equal(data.train_masks[0], camvid_mask(0) % 3)
