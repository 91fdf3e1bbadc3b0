"""Post-processing on hand-built masks with exact expected outputs."""

import numpy as np
import pytest

from segwise.errors import SegwiseError
from segwise.inference import postprocess
from segwise.task import Task


def grid(text: str) -> np.ndarray:
    """A mask from rows of digits, e.g. "010\\n111"."""
    return np.array([[int(c) for c in row] for row in text.split()], dtype=np.int64)


def test_threshold_binary_uses_foreground_probability():
    foreground = np.array([[0.2, 0.5], [0.51, 0.9]])
    probabilities = np.stack([1 - foreground, foreground])
    binary = Task("binary", 2)
    assert binary.decide(probabilities, 0.5).tolist() == [[0, 0], [1, 1]]
    assert binary.decide(probabilities, 0.3).tolist() == [[0, 1], [1, 1]]
    assert postprocess.Steps(binary, 0.3)(probabilities).tolist() == [[0, 1], [1, 1]]


def test_threshold_multiclass_sends_unsure_pixels_to_background():
    probabilities = np.array(
        [
            [[0.1, 0.3]],  # background
            [[0.8, 0.35]],  # class 1
            [[0.1, 0.35]],  # class 2
        ]
    )
    multiclass = Task("multiclass", 3)
    assert multiclass.decide(probabilities, 0.5).tolist() == [[1, 0]]
    assert multiclass.decide(probabilities, 0.2).tolist() == [[1, 1]]


def test_threshold_multilabel_per_channel():
    probabilities = np.array([[[0.2, 0.6]], [[0.2, 0.6]]])
    labels = Task("multilabel", 2)
    out = labels.decide(probabilities, [0.1, 0.7])
    assert out.dtype == bool
    assert out.tolist() == [[[True, True]], [[False, False]]]
    with pytest.raises(SegwiseError, match="between 0 and 1"):
        labels.decide(probabilities, 1.5)
    with pytest.raises(SegwiseError, match="between 0 and 1"):
        postprocess.Steps(labels, 1.5)


def test_remove_small_binary():
    mask = grid(
        """
        110000
        110001
        000000
        001000
        000100
        """
    ).astype(bool)
    # The diagonal pair is one 8-connected component of 2 pixels; the lone pixel has 1.
    assert (
        postprocess.remove_small(mask, 2).astype(int).tolist()
        == grid(
            """
        110000
        110000
        000000
        001000
        000100
        """
        ).tolist()
    )
    assert (
        postprocess.remove_small(mask, 3).astype(int).tolist()
        == grid(
            """
        110000
        110000
        000000
        000000
        000000
        """
        ).tolist()
    )
    assert postprocess.remove_small(mask, 2).dtype == bool


def test_remove_small_multiclass_takes_the_surrounding_class():
    mask = grid(
        """
        11111000
        11211000
        11111030
        00000000
        """
    )
    assert (
        postprocess.remove_small(mask, 2).tolist()
        == grid(
            """
        11111000
        11111000
        11111000
        00000000
        """
        ).tolist()
    )


def test_remove_small_neighbour_majority_ignores_other_removed_parts():
    # The lone 2 touches four 1s, three 0s and the removed 3: it becomes 1. The 3 touches the removed 2,
    # two 1s and five 0s (the mask's edge is not a neighbour): it becomes 0, not the 2's new class.
    mask = grid(
        """
        1110
        1230
        0000
        """
    )
    assert (
        postprocess.remove_small(mask, 2).tolist()
        == grid(
            """
        1110
        1100
        0000
        """
        ).tolist()
    )


def test_keep_largest_per_class():
    mask = grid(
        """
        1100220
        1100000
        0000010
        2200000
        """
    )
    assert (
        postprocess.keep_largest(mask).tolist()
        == grid(
            """
        1100220
        1100000
        0000000
        0000000
        """
        ).tolist()
    )


def test_keep_largest_tie_keeps_first_in_scan_order():
    mask = grid(
        """
        1001
        0000
        """
    )
    assert postprocess.keep_largest(mask).tolist() == [[1, 0, 0, 0], [0, 0, 0, 0]]


def test_fill_holes_fills_background_only():
    mask = grid(
        """
        0000000
        0111110
        0100010
        0102010
        0111110
        0000000
        """
    )
    assert (
        postprocess.fill_holes(mask).tolist()
        == grid(
            """
        0000000
        0111110
        0111110
        0112110
        0111110
        0000000
        """
        ).tolist()
    )


def test_fill_holes_leaves_open_regions_and_diagonal_leaks():
    # The gap at the top reaches the border: no hole. With 8-connected objects, the background is
    # 4-connected, so a region that only touches the outside at a corner is still a hole.
    open_ring = grid(
        """
        01010
        01010
        01110
        """
    )
    assert postprocess.fill_holes(open_ring).tolist() == open_ring.tolist()
    diagonal = grid(
        """
        0110
        1001
        1001
        0110
        """
    ).astype(bool)
    assert (
        postprocess.fill_holes(diagonal).astype(int).tolist()
        == grid(
            """
        0110
        1111
        1111
        0110
        """
        ).tolist()
    )


def test_components_boxes_areas_and_scores():
    mask = grid(
        """
        1100000
        1100220
        0000020
        1000000
        """
    )
    probabilities = np.zeros((3, *mask.shape))
    probabilities[1] = 0.5
    probabilities[1, 0, 0] = 0.9
    probabilities[2] = 0.7
    found = postprocess.components(mask, probabilities, ["background", "cell", "nucleus"])
    assert [c.to_dict() for c in found] == [
        {
            "id": 1,
            "class_index": 1,
            "class_name": "cell",
            "x0": 0,
            "y0": 0,
            "x1": 2,
            "y1": 2,
            "area": 4,
            "score": 0.6,
        },
        {
            "id": 2,
            "class_index": 1,
            "class_name": "cell",
            "x0": 0,
            "y0": 3,
            "x1": 1,
            "y1": 4,
            "area": 1,
            "score": 0.5,
        },
        {
            "id": 3,
            "class_index": 2,
            "class_name": "nucleus",
            "x0": 4,
            "y0": 1,
            "x1": 6,
            "y1": 3,
            "area": 3,
            "score": 0.7,
        },
    ]
    assert postprocess.components(np.zeros((3, 3), int)) == []
    assert postprocess.components(mask)[0].score is None


def test_crop_object_paints_the_background():
    image = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    mask = grid(
        """
        00000
        01100
        00100
        00000
        """
    )
    crop = postprocess.crop_object(image, mask, background=(7, 8, 9))
    assert crop.shape == (2, 2, 3)
    assert crop[0, 0].tolist() == image[1, 1].tolist()
    assert crop[1, 1].tolist() == image[2, 2].tolist()
    assert crop[1, 0].tolist() == [7, 8, 9]
    assert postprocess.crop_object(image, np.zeros((4, 5), int)) is None


def test_functions_keep_dtype_and_do_not_modify_input():
    mask = grid("0120\n0000").astype(np.uint8)
    before = mask.copy()
    for function in (postprocess.keep_largest, postprocess.fill_holes):
        out = function(mask)
        assert out.dtype == np.uint8
    assert postprocess.remove_small(mask, 5).tolist() == [[0, 0, 0, 0], [0, 0, 0, 0]]
    assert (mask == before).all()


def test_fill_holes_agrees_with_scipy_on_random_binary_masks():
    from scipy import ndimage

    rng = np.random.default_rng(0)
    for density in (0.3, 0.5, 0.7):
        mask = rng.random((40, 60)) < density
        assert (postprocess.fill_holes(mask) == ndimage.binary_fill_holes(mask)).all()


def test_remove_small_and_keep_largest_on_random_binary_masks_match_a_label_oracle():
    from scipy import ndimage

    rng = np.random.default_rng(1)
    for density in (0.2, 0.45):
        mask = rng.random((40, 60)) < density
        labels, _ = ndimage.label(mask, structure=np.ones((3, 3)))
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        assert (postprocess.remove_small(mask, 4) == (sizes[labels] >= 4)).all()
        assert (postprocess.keep_largest(mask) == (labels == sizes.argmax())).all()


def test_steps_multilabel_thresholds_and_cleans_each_label_on_its_own():
    # Label 0: a ring around a hole, a speck, a block. Label 1 overlaps label 0's speck and block.
    label0 = grid("0000000000\n0111000000\n0101001000\n0111000000\n0000001111\n0000001111")
    label1 = grid("0000000000\n0000000000\n0000001000\n0000000000\n0000000111\n0000000000")
    probabilities = np.stack([np.where(label0 == 1, 0.9, 0.1), np.where(label1 == 1, 0.7, 0.5)])
    # A softmax reading would argmax these into H×W indices; multilabel keeps one plane per label.
    labels = Task("multilabel", 2)
    mask = postprocess.Steps(labels)(probabilities)
    assert mask.dtype == bool and mask.shape == (2, 6, 10)
    assert (mask == np.stack([label0, label1]).astype(bool)).all()  # 0.5 itself is not present
    cleaned = postprocess.Steps(labels, min_size=2, fill_holes=True, largest=True)(probabilities)
    expected = [
        postprocess.keep_largest(postprocess.fill_holes(postprocess.remove_small(plane.astype(bool), 2)))
        for plane in (label0, label1)
    ]
    assert (cleaned == np.stack(expected)).all()
    # Label 0: the speck goes, the filled ring (9 pixels) outgrows the block (8); label 1 keeps its line.
    assert (
        cleaned[0].astype(int).tolist()
        == grid("0000000000\n0111000000\n0111000000\n0111000000\n0000000000\n0000000000").tolist()
    )
    assert (
        cleaned[1].astype(int).tolist()
        == grid("0000000000\n0000000000\n0000000000\n0000000000\n0000000111\n0000000000").tolist()
    )
    strict = postprocess.Steps(labels, threshold=0.8)(probabilities)
    assert (strict[0] == label0.astype(bool)).all() and not strict[1].any()


def test_label_components_lists_every_labels_objects_even_overlapping():
    planes = np.zeros((2, 4, 6), bool)
    planes[0, :2, :2] = True  # label 0 (no background label: its objects count)
    planes[0, 3, 5] = True
    planes[1, :3, :3] = True  # overlaps label 0's first object
    probabilities = np.stack([np.full((4, 6), 0.8), np.full((4, 6), 0.6)])
    found = postprocess.label_components(planes, probabilities, ["road", "car"])
    assert [(c.id, c.class_index, c.class_name, c.area) for c in found] == [
        (1, 0, "road", 4),
        (2, 0, "road", 1),
        (3, 1, "car", 9),
    ]
    assert (found[2].x0, found[2].y0, found[2].x1, found[2].y1) == (0, 0, 3, 3)
    assert [c.score for c in found] == [0.8, 0.8, 0.6]
