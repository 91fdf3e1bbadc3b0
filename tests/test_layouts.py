"""Every layout and mask encoding, written from the same canonical samples, loads back to those samples."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segwise.constants import IGNORE_INDEX
from segwise.data import load_data
from segwise.data.formats import find_data
from segwise.errors import SegwiseError

STEMS = ["a0", "a1", "a2", "a3"]
TRAIN, VAL = STEMS[:3], STEMS[3:]
NAMES = ["background", "cat", "dog"]
COLOURS = [[0, 0, 0], [200, 0, 0], [0, 0, 200]]
VOID_COLOUR = [255, 255, 255]
H, W = 24, 32


def canonical(stem: str) -> tuple[np.ndarray, np.ndarray]:
    """An RGB image and a class-index mask: a cat and a dog rectangle and a void stripe."""
    index = STEMS.index(stem)
    image = np.random.default_rng(index).integers(0, 256, (H, W, 3), dtype=np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[2 : 10 + index, 3:15] = 1
    mask[12:20, 10 + index : 28] = 2
    mask[:, 30:] = IGNORE_INDEX
    return image, mask


def save(array: np.ndarray, path: Path, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(array, mode) if mode else Image.fromarray(array)
    if mode == "P":
        flat = [c for colour in COLOURS for c in colour]
        image.putpalette(flat + [0] * (768 - len(flat)))
    image.save(path)
    return path


def with_void(mask: np.ndarray, void: int) -> np.ndarray:
    return np.where(mask == IGNORE_INDEX, void, mask).astype(np.uint8)


def write_names(root: Path, name: str = "classes.txt", void: bool = False) -> None:
    (root / name).write_text("\n".join(NAMES + (["void"] if void else [])) + "\n")


def write_class_dict(root: Path) -> None:
    rows = [f"{n},{r},{g},{b}" for n, (r, g, b) in zip(NAMES, COLOURS, strict=True)]
    (root / "class_dict.csv").write_text("name,r,g,b\n" + "\n".join(rows + ["Void,255,255,255"]) + "\n")


def flat(root):  # images/ + masks/, 255 = void
    for stem in STEMS:
        image, mask = canonical(stem)
        save(image, root / "images" / f"{stem}.png")
        save(mask, root / "masks" / f"{stem}.png")
    write_names(root)


def split_inside(root):  # train/images, train/masks, val/...
    for split, stems in (("train", TRAIN), ("val", VAL)):
        for stem in stems:
            image, mask = canonical(stem)
            save(image, root / split / "images" / f"{stem}.png")
            save(mask, root / split / "masks" / f"{stem}.png")
    write_names(root)


def split_outside(root):  # images/train, masks/train (labels/ as the mask folder's name)
    for split, stems in (("train", TRAIN), ("val", VAL)):
        for stem in stems:
            image, mask = canonical(stem)
            save(image, root / "images" / split / f"{stem}.png")
            save(mask, root / "labels" / split / f"{stem}.png")
    write_names(root)


def mask_suffix(root):  # masks/x_mask.png, palette PNGs
    for stem in STEMS:
        image, mask = canonical(stem)
        save(image, root / "images" / f"{stem}.png")
        save(mask, root / "masks" / f"{stem}_mask.png", "P")
    write_names(root)


def side_by_side(root):  # images/x.png next to images/x_mask.png
    for stem in STEMS:
        image, mask = canonical(stem)
        save(image, root / "images" / f"{stem}.png")
        save(mask, root / "images" / f"{stem}_mask.png")
    write_names(root)


def list_files(root):  # train.txt / val.txt split one pool
    flat(root)
    (root / "train.txt").write_text("\n".join(f"{s}.png" for s in TRAIN) + "\n")
    (root / "val.txt").write_text("\n".join(VAL) + "\n")


def fastai(root):  # images/, labels/x_P.png, codes.txt with a Void code, valid.txt
    for stem in STEMS:
        image, mask = canonical(stem)
        save(image, root / "images" / f"{stem}.png")
        save(with_void(mask, 3), root / "labels" / f"{stem}_P.png")
    write_names(root, "codes.txt", void=True)
    (root / "valid.txt").write_text("\n".join(f"{s}.png" for s in VAL) + "\n")


def segnet(root):  # train/ + trainannot/, Void as the class_dict's last row
    for split, stems in (("train", TRAIN), ("val", VAL)):
        for stem in stems:
            image, mask = canonical(stem)
            save(image, root / split / f"{stem}.png")
            save(with_void(mask, 3), root / f"{split}annot" / f"{stem}.png")
    write_class_dict(root)


def voc(root):  # JPEGImages/, SegmentationClass/ palette PNGs, ImageSets/Segmentation lists
    for stem in STEMS:
        image, mask = canonical(stem)
        save(image, root / "JPEGImages" / f"{stem}.png")  # lossless, so pixels compare exactly
        save(mask, root / "SegmentationClass" / f"{stem}.png", "P")
    save(canonical("a0")[0], root / "JPEGImages" / "detection_only.png")  # no mask, not listed: skipped
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("\n".join(TRAIN) + "\n")
    (lists / "val.txt").write_text("\n".join(VAL) + "\n")
    write_names(root)


def rgb_coded(root):  # colour-coded RGB masks with class_dict.csv
    table = np.array(COLOURS + [VOID_COLOUR], np.uint8)
    for stem in STEMS:
        image, mask = canonical(stem)
        save(image, root / "images" / f"{stem}.png")
        save(table[with_void(mask, 3)], root / "masks" / f"{stem}.png")
    write_class_dict(root)


def index16(root):  # I;16 PNG masks, TIFF images
    import tifffile

    for stem in STEMS:
        image, mask = canonical(stem)
        (root / "images").mkdir(parents=True, exist_ok=True)
        tifffile.imwrite(root / "images" / f"{stem}.tif", image)
        save(mask.astype(np.uint16), root / "masks" / f"{stem}.png")
    write_names(root)


def bmp(root):  # BMP images, index BMP masks
    for stem in STEMS:
        image, mask = canonical(stem)
        save(image, root / "images" / f"{stem}.bmp")
        save(mask, root / "masks" / f"{stem}.bmp")
    write_names(root)


def coco(root):  # COCO instances (RLE), two instances per category, crowd stripe → ignore
    from pycocotools import mask as mask_utils

    for split, stems in (("train", TRAIN), ("val", VAL)):
        images, annotations = [], []
        for stem in stems:
            image, mask = canonical(stem)
            save(image, root / "images" / split / f"{stem}.png")
            image_id = STEMS.index(stem) + 1
            images.append({"id": image_id, "file_name": f"{stem}.png", "height": H, "width": W})
            regions = [(17, mask == 1, 0), (18, mask == 2, 0), (17, mask == IGNORE_INDEX, 1)]
            # A category's region split in two instances: the semantic mask is their union.
            halves = [(c, r & (np.arange(W) < 16), k) for c, r, k in regions[:2]]
            halves += [(c, r & (np.arange(W) >= 16), k) for c, r, k in regions[:2]] + regions[2:]
            for category, region, crowd in halves:
                if not region.any():
                    continue
                rle = mask_utils.encode(np.asfortranarray(region.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode("ascii")
                annotations.append(
                    {
                        "id": len(annotations) + 1,
                        "image_id": image_id,
                        "category_id": category,
                        "segmentation": rle,
                        "area": int(region.sum()),
                        "bbox": [0, 0, W, H],
                        "iscrowd": crowd,
                    }
                )
        categories = [{"id": 18, "name": "dog"}, {"id": 17, "name": "cat"}, {"id": 90, "name": "unused"}]
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(
            json.dumps({"images": images, "annotations": annotations, "categories": categories})
        )


WRITERS = [flat, split_inside, split_outside, mask_suffix, side_by_side, list_files, fastai, segnet, voc]
WRITERS += [rgb_coded, index16, bmp, coco]


def loaded_samples(data) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    pairs = data.train_pairs + data.val_pairs
    images = np.concatenate([data.train_images, data.val_images])
    masks = np.concatenate([data.train_masks, data.val_masks])
    return {image.name.split(".")[0]: (images[i], masks[i]) for i, (image, _) in enumerate(pairs)}


@pytest.mark.parametrize("write", WRITERS, ids=lambda w: w.__name__)
def test_every_layout_and_encoding_loads_the_canonical_samples(tmp_path, write):
    write(tmp_path)
    kwargs = {"categories": ["cat", "dog"]} if write is coco else {}
    data = load_data(tmp_path, val_fraction=0.25, **kwargs)
    assert data.classes.names == NAMES
    assert data.size == (H, W) and data.in_channels == 3 and data.mode == "multiclass"
    samples = loaded_samples(data)
    assert sorted(samples) == STEMS
    for stem in STEMS:
        image, mask = canonical(stem)
        np.testing.assert_array_equal(samples[stem][0], image, err_msg=stem)
        np.testing.assert_array_equal(samples[stem][1], mask, err_msg=stem)
    if write in (split_inside, split_outside, list_files, fastai, segnet, voc, coco):
        assert [p[0].name.split(".")[0] for p in data.val_pairs] == VAL  # the split on disk is kept


@pytest.mark.parametrize(
    "write",
    [flat, split_inside, split_outside, mask_suffix, side_by_side, fastai, segnet, voc, coco],
    ids=lambda w: w.__name__,
)
def test_auto_detection_names_the_layout(tmp_path, write):
    write(tmp_path)
    expected = {fastai: "fastai", segnet: "segnet", voc: "voc", coco: "coco"}.get(write, "folders")
    assert find_data(tmp_path).layout == expected
    assert find_data(tmp_path, layout=expected).layout == expected


def binary_mask(stem: str) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[4 : 12 + STEMS.index(stem), 8:24] = 1
    return mask


@pytest.mark.parametrize("encoding", ["0_255", "0_1", "bilevel", "jpeg"])
def test_binary_encodings_load_to_the_same_0_1_masks(tmp_path, encoding):
    (tmp_path / "masks").mkdir()
    for stem in STEMS:
        image, _ = canonical(stem)
        save(image, tmp_path / "images" / f"{stem}.png")
        mask = binary_mask(stem)
        if encoding == "0_255":
            save(mask * 255, tmp_path / "masks" / f"{stem}.png")
        elif encoding == "0_1":
            save(mask, tmp_path / "masks" / f"{stem}.png")
        elif encoding == "bilevel":
            Image.fromarray(mask * 255).convert("1").save(tmp_path / "masks" / f"{stem}.png")
        else:  # lossy: values near 0 and 255 with compression noise in between
            Image.fromarray(mask * 255).save(tmp_path / "masks" / f"{stem}.jpg", quality=90)
    data = load_data(tmp_path, val_fraction=0.25)
    assert data.classes.num_classes == 2 and data.mode == "binary"
    for stem, (_, mask) in loaded_samples(data).items():
        np.testing.assert_array_equal(mask, binary_mask(stem), err_msg=stem)


def test_noisy_binary_png_masks_are_thresholded(tmp_path):
    for stem in STEMS:
        save(canonical(stem)[0], tmp_path / "images" / f"{stem}.png")
        noisy = np.where(binary_mask(stem) == 1, 250, 3).astype(np.uint8)
        noisy[0, 0], noisy[-1, -1] = 0, 255
        save(noisy, tmp_path / "masks" / f"{stem}.png")
    data = load_data(tmp_path, val_fraction=0.25)
    assert data.classes.threshold == 128 and data.classes.num_classes == 2


def test_explicit_mask_threshold_binarises_gray_masks(tmp_path):
    for stem in STEMS:
        save(canonical(stem)[0], tmp_path / "images" / f"{stem}.png")
        save((binary_mask(stem) * 100 + 20).astype(np.uint8), tmp_path / "masks" / f"{stem}.png")
    data = load_data(tmp_path, val_fraction=0.25, mask_threshold=60)
    for stem, (_, mask) in loaded_samples(data).items():
        np.testing.assert_array_equal(mask, binary_mask(stem))


def multilabel_masks(stem: str) -> np.ndarray:
    """Two overlapping labels: H×W×2."""
    index = STEMS.index(stem)
    first, second = np.zeros((H, W), np.uint8), np.zeros((H, W), np.uint8)
    first[2:14, 2 : 12 + index] = 1
    second[8:20, 8:30] = 1
    return np.stack([first, second], -1)


@pytest.mark.parametrize("encoding", ["class_folders", "multichannel_tiff"])
def test_multilabel_encodings_load_to_one_channel_per_class(tmp_path, encoding):
    import tifffile

    for stem in STEMS:
        save(canonical(stem)[0], tmp_path / "images" / f"{stem}.png")
        masks = multilabel_masks(stem)
        if encoding == "class_folders":  # masks/<class>/x.png, 0/255
            for channel, name in enumerate(["road", "car"]):
                save(masks[..., channel] * 255, tmp_path / "masks" / name / f"{stem}.png")
        else:
            (tmp_path / "masks").mkdir(exist_ok=True)
            tifffile.imwrite(tmp_path / "masks" / f"{stem}.tif", masks, photometric="minisblack")
    (tmp_path / "classes.txt").write_text("road\ncar\n")
    data = load_data(tmp_path, val_fraction=0.25)
    assert data.mode == "multilabel" and data.classes.names == ["road", "car"]
    assert data.train_masks.shape[1:] == (2, H, W)
    for stem, (_, mask) in loaded_samples(data).items():
        np.testing.assert_array_equal(mask, multilabel_masks(stem).transpose(2, 0, 1), err_msg=stem)


def test_coco_unchosen_categories_and_their_crowds_are_background(tmp_path):
    coco(tmp_path)  # the crowd stripe belongs to "cat"
    data = load_data(tmp_path, categories=["dog"])
    assert data.classes.names == ["background", "dog"] and data.mode == "binary"
    for stem, (_, mask) in loaded_samples(data).items():
        truth = canonical(stem)[1]
        assert np.all(mask[truth == 2] == 1)
        assert np.all(mask[truth != 2] == 0)  # cat, and the cat crowd, are not chosen: background


def test_coco_unknown_category_lists_the_known_ones(tmp_path):
    coco(tmp_path)
    with pytest.raises(SegwiseError, match=r"categories \['cow'\] are not in the file; choose from"):
        load_data(tmp_path, categories=["cow"])


def test_jpeg_image_exif_orientation_is_applied_when_loading(tmp_path):
    yy, xx = np.mgrid[0:H, 0:W]
    smooth = np.stack([yy * 10, xx * 8, 255 - yy * 10], -1).astype(np.uint8)  # JPEG keeps it nearly exact
    for stem in STEMS:
        image = Image.fromarray(smooth).transpose(Image.Transpose.ROTATE_90)  # stored W×H
        exif = image.getexif()
        exif[0x0112] = 6  # viewers rotate 90° clockwise: back to H×W
        (tmp_path / "images").mkdir(exist_ok=True)
        image.save(tmp_path / "images" / f"{stem}.jpg", exif=exif, quality=95)
        save(canonical(stem)[1], tmp_path / "masks" / f"{stem}.png")
    data = load_data(tmp_path, val_fraction=0.25)
    for image, _ in loaded_samples(data).values():
        assert image.shape == (H, W, 3)
        assert np.abs(image.astype(int) - smooth).mean() < 8  # right way up (upside down differs by ~80)


def test_a_named_layout_that_does_not_fit_says_what_it_expects(tmp_path):
    flat(tmp_path)
    with pytest.raises(SegwiseError, match=r"does not look like a voc dataset; expected DATA/JPEGImages/"):
        find_data(tmp_path, layout="voc")
    with pytest.raises(SegwiseError, match=r"layout 'kitti' is not known; choose from \['auto'"):
        find_data(tmp_path, layout="kitti")


def test_unknown_colour_in_a_colour_coded_mask_names_file_and_colour(tmp_path):
    rgb_coded(tmp_path)
    mask = np.asarray(Image.open(tmp_path / "masks" / "a1.png")).copy()
    mask[0, 0] = [1, 2, 3]
    Image.fromarray(mask).save(tmp_path / "masks" / "a1.png")
    with pytest.raises(SegwiseError, match=r"a1\.png: colours \[\[1, 2, 3\]\] are not in the colour table"):
        load_data(tmp_path)


def test_data_source_lists_every_file_the_data_depends_on(tmp_path):
    coco(tmp_path)
    files = find_data(tmp_path).files()
    assert sum(f.suffix == ".json" for f in files) == 2 and sum(f.suffix == ".png" for f in files) == 4
    other = tmp_path / "multilabel"
    for stem in STEMS[:2]:
        save(canonical(stem)[0], other / "images" / f"{stem}.png")
        for name in ("road", "car"):
            save(np.zeros((H, W), np.uint8), other / "masks" / name / f"{stem}.png")
    names = sorted(str(f.relative_to(other)) for f in find_data(other).files())
    assert names == [
        "images/a0.png", "images/a1.png",
        "masks/car/a0.png", "masks/car/a1.png", "masks/road/a0.png", "masks/road/a1.png",
    ]  # fmt: skip


def test_segnet_without_a_class_file_gets_camvid_names_and_void(tmp_path):
    segnet(tmp_path)
    (tmp_path / "class_dict.csv").unlink()
    for path in [*(tmp_path / "trainannot").iterdir(), *(tmp_path / "valannot").iterdir()]:
        mask = np.asarray(Image.open(path))  # SegNet's files use value 11 for void
        Image.fromarray(np.where(mask == 3, 11, mask).astype(np.uint8)).save(path)
    data = load_data(tmp_path)
    assert data.classes.names[:3] == ["Sky", "Building", "Pole"] and data.classes.num_classes == 11
    assert data.classes.ignore_value == 11
    np.testing.assert_array_equal(loaded_samples(data)["a0"][1], canonical("a0")[1])


def test_a_run_trained_on_coco_evaluates_with_its_own_layout(tmp_path):
    """`segwise eval` reads masks through the layout the run was trained with, not as plain files."""
    import segwise
    from segwise.evaluate import evaluate_split, split_pairs
    from tests.conftest import TINY

    coco(tmp_path / "data")
    run = segwise.train(
        tmp_path / "data",
        runs_dir=tmp_path / "runs",
        epochs=1,
        categories=["cat", "dog"],
        progress=False,
        **TINY,
    ).run_dir
    predictor = segwise.load(run)
    plan = predictor.config.data["plan"]
    pairs, source = split_pairs(tmp_path / "data", "val", plan["layout"], plan["categories"])
    evaluation = evaluate_split(predictor, pairs, source=source)
    counted = sum(int((canonical(p[0].stem)[1] != IGNORE_INDEX).sum()) for p in pairs)
    assert evaluation.names == NAMES and int(evaluation.matrix.matrix.sum()) == counted
