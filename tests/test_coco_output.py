"""`segwise predict --format coco`: one COCO instances file that reads back as the predicted masks."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from segwise.cli import main
from segwise.data.formats import find_data
from segwise.errors import SegwiseError
from segwise.inference import coco, postprocess, predict_folder
from segwise.io import read_mask

from .conftest import run_cli
from .test_multilabel_predict import NAMES, blocks, pixel_predictor
from .test_predict_cli import noise_image, predictor  # noqa: F401  (the module-scoped fixture)


def coco_dataset(root: Path, inputs: list[Path], out: Path) -> Path:
    """DATA/images/<the inputs> + DATA/annotations/<the predicted COCO file>: a `coco` dataset."""
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    for path in inputs:
        shutil.copy(path, root / "images" / path.name)
    shutil.copy(out / coco.COCO_FILE, root / "annotations" / coco.COCO_FILE)
    return root


def read_back(root: Path, categories: list[str] | None = None) -> dict[str, np.ndarray]:
    source = find_data(root, "coco", categories)
    assert source.layout == "coco" and not source.problems
    return {image.name: source.read_mask((image, mask)) for image, mask in source.pairs["all"]}


def test_multiclass_round_trip_equals_the_png_masks(predictor, shapes_data, tmp_path):  # noqa: F811
    inputs = sorted((shapes_data / "test" / "images").glob("*.png"))
    inputs.append(noise_image(tmp_path / "in" / "noise.png", size=(30, 41)))
    image = np.asarray(Image.open(inputs[0]).convert("RGB"))[5:46, 3:60]  # not square: width ≠ height
    Image.fromarray(image).save(tmp_path / "in" / "cut.png")
    inputs.append(tmp_path / "in" / "cut.png")
    report = predictor.predict_to_folder(inputs, tmp_path / "out", formats="png,coco,json", min_size=2)
    out = tmp_path / "out"
    assert out / coco.COCO_FILE in report.files and report.total == 2 * len(inputs) + 1

    written = json.loads((out / coco.COCO_FILE).read_text())
    ordered = sorted(inputs)
    assert [(i["id"], i["file_name"]) for i in written["images"]] == [
        (number, path.name) for number, path in enumerate(ordered, start=1)
    ]
    names = predictor.class_names
    assert written["categories"] == [{"id": k, "name": names[k]} for k in range(1, len(names))]
    for info, path in zip(written["images"], ordered, strict=True):
        mask = read_mask(out / f"{path.stem}.png")
        assert (info["height"], info["width"]) == mask.shape
        objects = json.loads((out / f"{path.stem}.json").read_text())["objects"]
        mine = [a for a in written["annotations"] if a["image_id"] == info["id"]]
        assert [(a["category_id"], a["area"], a["score"]) for a in mine] == [
            (o["class_index"], o["area"], o["score"]) for o in objects
        ]
        assert [a["bbox"] for a in mine] == [
            [o["x0"], o["y0"], o["x1"] - o["x0"], o["y1"] - o["y0"]] for o in objects
        ]
        assert all(a["iscrowd"] == 0 and isinstance(a["segmentation"]["counts"], str) for a in mine)
    assert [a["id"] for a in written["annotations"]] == list(range(1, len(written["annotations"]) + 1))
    assert len(written["annotations"]) > len(inputs)  # shapes were found

    masks = read_back(coco_dataset(tmp_path / "DATA", inputs, out))
    assert sorted(masks) == sorted(path.name for path in inputs)
    for path in inputs:
        np.testing.assert_array_equal(
            masks[path.name], read_mask(out / f"{path.stem}.png"), err_msg=path.name
        )


def test_per_label_round_trip_equals_each_label_png(tmp_path):
    inputs = []
    for seed, size in enumerate([(30, 40), (24, 24), (33, 20)]):
        image = blocks(*size, seed=seed)
        image[-3:, -3:, 0] = 255  # a lone speck of road: an object of its own
        Image.fromarray(image).save(tmp_path / f"in{seed}.png")
        inputs.append(tmp_path / f"in{seed}.png")
    pixel_predictor().predict_to_folder(inputs, tmp_path / "out", formats=["png", "coco"])
    out = tmp_path / "out"
    written = json.loads((out / coco.COCO_FILE).read_text())
    assert written["categories"] == [{"id": k + 1, "name": name} for k, name in enumerate(NAMES)]
    assert {a["category_id"] for a in written["annotations"]} == {1, 2, 3}

    data = coco_dataset(tmp_path / "DATA", inputs, out)
    for label in NAMES:  # one label at a time: the COCO reader paints overlapping labels into one mask
        masks = read_back(data, categories=[label])
        for path in inputs:
            plane = read_mask(out / label / f"{path.stem}.png") == 255
            np.testing.assert_array_equal(masks[path.name], plane.astype(np.uint8), err_msg=f"{label} {path}")


def test_file_names_are_the_inputs_or_their_output_names_where_they_collide(tmp_path):
    paths = [tmp_path / "a" / "x.png", tmp_path / "b" / "x.png", tmp_path / "a" / "y.png"]
    assert coco.file_names(paths, ["a/x", "b/x", "y"]) == ["a/x.png", "b/x.png", "y.png"]


def test_the_coco_file_never_replaces_another_output(predictor, tmp_path):  # noqa: F811
    source = noise_image(tmp_path / "in" / "predictions.coco.png")  # its json would be the COCO file
    with pytest.raises(SegwiseError, match="the COCO file of all inputs would collide"):
        predictor.predict_to_folder([source], tmp_path / "out", formats="json,coco")
    assert not (tmp_path / "out").exists()


def test_shards_number_images_by_the_whole_sorted_list(predictor, tmp_path):  # noqa: F811
    for i in range(3):
        noise_image(tmp_path / "in" / f"{i}.png", seed=i)
    # No process group: rank 1 keeps its records, rank 0 writes only its own share, with the ids of
    # the whole list.
    second = predictor.predict_to_folder([tmp_path / "in"], tmp_path / "out", formats="coco", shard=(1, 2))
    assert second.files == []
    first = predictor.predict_to_folder([tmp_path / "in"], tmp_path / "out", formats="coco", shard=(0, 2))
    assert first.files == [tmp_path / "out" / coco.COCO_FILE]
    images = json.loads(first.files[0].read_text())["images"]
    assert [(i["id"], i["file_name"]) for i in images] == [(1, "0.png"), (3, "2.png")]


def uncompressed_rle(region: np.ndarray) -> list[int]:
    """COCO's uncompressed RLE counts: run lengths in column-major order, starting with 0s."""
    runs, value, length = [], 0, 0
    for pixel in region.ravel(order="F"):
        if pixel != value:
            runs.append(length)
            value, length = pixel, 0
        length += 1
    return [*runs, length]


@pytest.mark.parametrize("crowd_counts", ["list", "string"])
@pytest.mark.parametrize("thing_counts", ["list", "string"])
def test_crowd_and_non_crowd_rle_load_with_either_counts(crowd_counts, thing_counts, tmp_path):
    from pycocotools import mask as mask_utils

    def segmentation(region: np.ndarray, counts: str) -> dict:
        if counts == "list":
            return {"size": list(region.shape), "counts": uncompressed_rle(region)}
        encoded = mask_utils.encode(np.asfortranarray(region))
        return {"size": list(region.shape), "counts": encoded["counts"].decode("ascii")}

    height, width = 6, 5
    crowd = np.zeros((height, width), np.uint8)
    crowd[:, :2] = 1
    thing = np.zeros((height, width), np.uint8)
    thing[2:4, 1:4] = 1  # overlaps the crowd: a labelled instance inside a crowd keeps its label
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 7, "iscrowd": 1, "area": 12, "bbox": [0, 0, 2, 6]},
        {"id": 2, "image_id": 1, "category_id": 7, "iscrowd": 0, "area": 6, "bbox": [1, 2, 3, 2]},
    ]
    annotations[0]["segmentation"] = segmentation(crowd, crowd_counts)
    annotations[1]["segmentation"] = segmentation(thing, thing_counts)
    (tmp_path / "images").mkdir()
    Image.fromarray(np.zeros((height, width, 3), np.uint8)).save(tmp_path / "images" / "a.png")
    (tmp_path / "annotations").mkdir()
    record = {
        "images": [{"id": 1, "file_name": "a.png", "height": height, "width": width}],
        "annotations": annotations,
        "categories": [{"id": 7, "name": "cell"}],
    }
    (tmp_path / "annotations" / "instances.json").write_text(json.dumps(record))
    mask = read_back(tmp_path)["a.png"]
    expected = np.where(crowd == 1, 255, 0)
    expected[thing == 1] = 1
    np.testing.assert_array_equal(mask, expected)


def test_missing_pycocotools_fails_in_one_line_before_the_model_loads(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "pycocotools", None)  # import fails as if not installed
    monkeypatch.setitem(sys.modules, "pycocotools.mask", None)
    image = noise_image(tmp_path / "a.png")
    with pytest.raises(SegwiseError, match=r"coco needs pycocotools.*pip install 'segwise\[coco\]'"):
        predict_folder(tmp_path / "no_such_run", [image], tmp_path / "out", formats="png,coco")
    code = main(
        ["predict", str(tmp_path / "no_such_run"), str(image), "-o", str(tmp_path / "o"), "--format", "coco"]
    )
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "pip install 'segwise[coco]'" in lines[0], lines
    assert "no_such_run" not in lines[0]
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_components_keep_their_pixels_out_of_the_json():
    mask = np.zeros((4, 5), np.int64)
    mask[0, 0:2] = 1
    mask[1, 1] = 1  # touches at a corner of the box but is 8-connected: one object
    mask[0, 4] = 1
    found = postprocess.components(mask)
    assert [c.pixels.tolist() for c in found] == [[[True, True], [False, True]], [[True]]]
    assert "pixels" not in found[0].to_dict()


needs_opencv = pytest.mark.skipif(
    importlib.util.find_spec("cv2") is None, reason="coco polygons need OpenCV (segwise[coco]), not installed"
)


def polygons_module():
    """`inference.polygons`, imported in the tests that have OpenCV (it imports cv2)."""
    from segwise.inference import polygons

    return polygons


def disc(height: int, width: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    rows, cols = np.mgrid[:height, :width]
    return (rows - centre[0]) ** 2 + (cols - centre[1]) ** 2 <= radius**2


def polygon_shapes(height: int = 110, width: int = 200) -> tuple[np.ndarray, dict[str, tuple[int, int]]]:
    """Three label planes of objects ≥ 20 px, and two specks: road a disc and an annulus, car a
    rectangle with two holes, sky an L (concave) and the specks. Returns the planes and a pixel inside
    each hole, which must stay empty."""
    annulus = disc(height, width, (25, 80), 20) & ~disc(height, width, (25, 80), 9)
    road = disc(height, width, (25, 25), 15) | annulus
    car = np.zeros((height, width), bool)
    car[60:100, 10:70] = True
    car[70:90, 20:35] = car[70:90, 45:60] = False
    sky = np.zeros((height, width), bool)
    sky[55:100, 120:135] = sky[85:100, 120:170] = True
    sky[10, 150] = True  # a lone pixel
    sky[9:12, 160] = sky[10, 159:162] = True  # a plus of 5 pixels
    holes = {"annulus": (25, 80), "left hole": (80, 27), "right hole": (80, 52)}
    return np.stack([road, car, sky]), holes


def object_ious(truth: np.ndarray, drawn: np.ndarray) -> list[tuple[float, int]]:
    """(IoU, area) of every 8-connected object of `truth` with what `drawn` holds within 2 pixels of its
    box, other objects' pixels left out."""
    labels, _ = ndimage.label(truth, structure=np.ones((3, 3)))
    found = []
    for index, box in enumerate(ndimage.find_objects(labels), start=1):
        around = tuple(slice(max(part.start - 2, 0), part.stop + 2) for part in box)
        mine = labels[around] == index
        theirs = drawn[around].astype(bool) & ((labels[around] == 0) | mine)
        found.append(((mine & theirs).sum() / (mine | theirs).sum(), int(mine.sum())))
    return found


@needs_opencv
def test_polygons_round_trip_within_the_promised_iou_holes_kept(tmp_path):
    planes, holes = polygon_shapes()
    image = np.where(planes.transpose(1, 2, 0), 255, 0).astype(np.uint8)
    Image.fromarray(image).save(tmp_path / "shapes.png")
    inputs = [tmp_path / "shapes.png"]
    exact = pixel_predictor(tile=(64, 64))  # at native resolution: label c exactly where channel c is 255
    exact.predict_to_folder(inputs, tmp_path / "out", formats="png,json,coco", coco_polygons=True)
    out = tmp_path / "out"

    written = json.loads((out / coco.COCO_FILE).read_text())
    objects = json.loads((out / "shapes.json").read_text())["objects"]
    assert [(a["area"], a["bbox"]) for a in written["annotations"]] == [  # from the mask, not the polygon
        (o["area"], [o["x0"], o["y0"], o["x1"] - o["x0"], o["y1"] - o["y0"]]) for o in objects
    ]
    for annotation in written["annotations"]:
        polygons = annotation["segmentation"]
        assert polygons and all(len(p) >= 6 and len(p) % 2 == 0 for p in polygons), polygons
        assert all(isinstance(number, float) for p in polygons for number in p)

    data = coco_dataset(tmp_path / "DATA", inputs, out)
    ious = []
    for plane, label in zip(planes, NAMES, strict=True):
        np.testing.assert_array_equal(read_mask(out / label / "shapes.png") == 255, plane)
        drawn = read_back(data, categories=[label])["shapes.png"]
        ious += object_ious(plane, drawn)
        for name, (row, col) in holes.items():
            assert not plane[row, col] and not drawn[row, col], name
    assert len(ious) == 6
    assert min(iou for iou, _ in ious) >= polygons_module().MIN_IOU, ious
    assert all(iou == 1 for iou, area in ious if area <= 5), ious  # the specks: their exact outline


@needs_opencv
def test_tolerance_zero_draws_every_object_back_exactly():
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(0)
    for _ in range(40):  # dense noise: holes, islands in holes, pixels touching at a corner
        height, width = rng.integers(4, 30, 2)
        noise = rng.random((height, width)) < rng.uniform(0.3, 0.8)
        labels, _ = ndimage.label(noise, structure=np.ones((3, 3)))
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            polygons = polygons_module().object_polygons(
                labels[box] == index, 0, (box[1].start, box[0].start)
            )
            drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, height, width)))
            np.testing.assert_array_equal(drawn, labels == index)


@needs_opencv
@pytest.mark.parametrize("tolerance", [1.0, 3.0])
def test_every_object_keeps_the_iou_at_any_tolerance(tolerance):
    from pycocotools import mask as mask_utils

    rng = np.random.default_rng(1)
    ious = []
    for size in (6, 12, 40, 90):  # smooth blobs, small to large
        field = ndimage.gaussian_filter(rng.random((size, size)), sigma=size / 8)
        labels, _ = ndimage.label(field > np.median(field), structure=np.ones((3, 3)))
        for index, box in enumerate(ndimage.find_objects(labels), start=1):
            polygons = polygons_module().object_polygons(
                labels[box] == index, tolerance, (box[1].start, box[0].start)
            )
            drawn = mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(polygons, size, size)))
            ious += [iou for iou, _ in object_ious(labels == index, drawn)]
    assert min(ious) >= polygons_module().MIN_IOU


@needs_opencv
def test_holes_run_against_the_outer_ring_so_non_zero_fill_leaves_them_empty():
    ring = disc(60, 60, (30, 30), 25) & ~disc(60, 60, (30, 30), 12)
    (polygon,) = polygons_module().object_polygons(ring, 0, (0, 0))
    x, y = np.asarray(polygon).reshape(-1, 2).T
    area = (np.dot(x, np.roll(y, -1)) - np.dot(np.roll(x, -1), y)) / 2  # bridges add nothing
    assert abs(abs(area) - ring.sum()) < 0.02 * ring.sum()  # the hole subtracts; run alike it would add


def test_bad_polygon_tolerance_or_polygons_without_coco_fail_in_one_line(tmp_path, capsys):
    image = noise_image(tmp_path / "a.png")
    command = ["predict", str(tmp_path / "no_such_run"), str(image), "-o", str(tmp_path / "o")]
    code = main([*command, "--format", "coco", "--coco-polygons", "--polygon-tolerance", "-1"])
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and "polygon tolerance -1.0 is not valid" in lines[0], lines
    for tolerance in (float("nan"), float("inf")):
        with pytest.raises(SegwiseError, match="polygon tolerance .* is not valid; expected pixels ≥ 0"):
            predict_folder(tmp_path / "no_such_run", [image], tmp_path / "out", polygon_tolerance=tolerance)
    with pytest.raises(SegwiseError, match="polygons are written by the coco format only"):
        predict_folder(tmp_path / "no_such_run", [image], tmp_path / "out", formats="png", coco_polygons=True)
    assert not (tmp_path / "out").exists() and not (tmp_path / "o").exists()


def test_missing_opencv_fails_in_one_line_before_the_model_loads(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cv2", None)  # import fails as if not installed
    image = noise_image(tmp_path / "a.png")
    with pytest.raises(SegwiseError, match=r"coco polygons need OpenCV.*pip install 'segwise\[coco\]'"):
        predict_folder(
            tmp_path / "no_such_run", [image], tmp_path / "out", formats="coco", coco_polygons=True
        )
    # RLE needs no OpenCV: the same call without polygons gets as far as looking for the run
    with pytest.raises(SegwiseError, match="no_such_run"):
        predict_folder(tmp_path / "no_such_run", [image], tmp_path / "out", formats="coco")


@needs_opencv
def test_cli_coco_polygons_read_back_as_the_png_masks(trained_run, shapes_data, tmp_path):
    inputs = sorted((shapes_data / "test" / "images").glob("*.png"))[:3]
    out = tmp_path / "out"
    command = ["predict", str(trained_run), *map(str, inputs), "-o", str(out), "--device", "cpu"]
    assert main([*command, "--format", "png,coco", "--coco-polygons", "--min-size", "2"]) == 0
    annotations = json.loads((out / coco.COCO_FILE).read_text())["annotations"]
    assert annotations and all(isinstance(a["segmentation"], list) for a in annotations)
    masks = read_back(coco_dataset(tmp_path / "DATA", inputs, out))
    for path in inputs:
        predicted = read_mask(out / f"{path.stem}.png")
        for value in np.unique(predicted[predicted > 0]):
            ious = object_ious(predicted == value, masks[path.name] == value)
            assert min(iou for iou, _ in ious) >= polygons_module().MIN_IOU, (path.name, value, ious)


@pytest.mark.slow  # two interpreters plus torchrun's agent
def test_torchrun_two_processes_write_the_same_coco_file_as_one(trained_run, tmp_path):
    for i in range(5):
        noise_image(tmp_path / "in" / f"img{i}.png", size=(24 + i, 40), seed=i)
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    common = ["predict", str(trained_run), str(tmp_path / "in"), "--format", "coco", "--device", "cpu"]
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    two = subprocess.run(
        [*torchrun, "-m", "segwise", *common, "-o", str(tmp_path / "two")],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert two.returncode == 0, two.stderr
    assert two.stdout.count("wrote 1 file(s)") == 1
    one = run_cli(*common, "-o", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    files = [json.loads((tmp_path / run / coco.COCO_FILE).read_text()) for run in ("two", "one")]
    # Different thread counts may move a score by a rounding step; everything else is the same.
    scores = [[a.pop("score") for a in written["annotations"]] for written in files]
    assert files[0] == files[1]
    np.testing.assert_allclose(scores[0], scores[1], atol=1e-4)
    assert [i["file_name"] for i in files[0]["images"]] == [f"img{i}.png" for i in range(5)]
