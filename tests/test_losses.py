"""Losses: oracle tests against torch and segmentation-models-pytorch (smp), properties, build_loss."""

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from segwise.constants import IGNORE_INDEX
from segwise.errors import SegwiseError
from segwise.losses import (
    LOSSES,
    MODES,
    BCEWithLogitsLoss,
    CrossEntropyLoss,
    DiceLoss,
    FocalLoss,
    JaccardLoss,
    LovaszLoss,
    TverskyLoss,
    build_loss,
)

N, C, H, W = 2, 4, 9, 9


def _batch(mode: str, seed: int = 0, dtype=torch.float64):
    """Random logits and a target with an absent class and an ignored band of rows."""
    generator = torch.Generator().manual_seed(seed)
    channels = 1 if mode == "binary" else C
    logits = torch.randn(N, channels, H, W, generator=generator, dtype=dtype)
    if mode == "multiclass":
        target = torch.randint(0, C - 1, (N, H, W), generator=generator)  # class C-1 absent
    elif mode == "binary":
        target = torch.randint(0, 2, (N, H, W), generator=generator)
    else:
        target = torch.randint(0, 2, (N, C, H, W), generator=generator)
        target[:, 2] = 0  # label 2 absent
    target[..., :2, :] = IGNORE_INDEX
    return logits, target


# ---------------------------------------------------------------- smp oracle
smp_losses = pytest.importorskip("segmentation_models_pytorch.losses", reason="smp not installed")

WEIGHTS = [0.5, 1.0, 2.0, 3.0]
REGION_CASES = [
    (DiceLoss, smp_losses.DiceLoss, {}),
    (DiceLoss, smp_losses.DiceLoss, {"smooth": 1.0}),
    (JaccardLoss, smp_losses.JaccardLoss, {}),
    (JaccardLoss, smp_losses.JaccardLoss, {"smooth": 0.5}),
    (TverskyLoss, smp_losses.TverskyLoss, {"alpha": 0.3, "beta": 0.7, "gamma": 1.5}),
    (FocalLoss, smp_losses.FocalLoss, {"alpha": 0.25, "gamma": 2.0}),
    (FocalLoss, smp_losses.FocalLoss, {"gamma": 3.0}),
]


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("ours, theirs, options", REGION_CASES)
@pytest.mark.parametrize("weighted", [False, True])
def test_losses_match_smp_with_ignore_index(mode, ours, theirs, options, weighted):
    if weighted and mode == "binary":
        pytest.skip("per-class weights need several classes (smp refuses them in binary mode too)")
    if ours is FocalLoss and mode == "multilabel":
        pytest.skip("smp's multilabel FocalLoss crashes with ignore_index; see the per-channel test below")
    logits, target = _batch(mode)
    extra = {"class_weights": WEIGHTS} if weighted else {}
    expected = theirs(mode, ignore_index=IGNORE_INDEX, **options, **extra)(logits, target)
    actual = ours(mode, **options, **extra)(logits, target)
    assert actual.item() == pytest.approx(expected.item(), abs=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
def test_multilabel_focal_matches_smp_binary_focal_per_channel(weighted):
    # smp's multilabel FocalLoss indexes N×H×W slices with an N×C×H×W mask when ignore_index is set
    # (IndexError), so the oracle is smp's binary FocalLoss on each channel, averaged over channels.
    logits, target = _batch("multilabel")
    reference = smp_losses.FocalLoss("binary", alpha=0.25, ignore_index=IGNORE_INDEX)
    per_channel = torch.stack([reference(logits[:, c], target[:, c]) for c in range(C)])
    weights = torch.tensor(WEIGHTS, dtype=torch.float64) if weighted else torch.ones(C, dtype=torch.float64)
    expected = (per_channel * weights).sum() / weights.sum()
    actual = FocalLoss("multilabel", alpha=0.25, class_weights=WEIGHTS if weighted else None)(logits, target)
    assert actual.item() == pytest.approx(expected.item(), abs=1e-5)
    # Without ignored elements smp's multilabel loss itself works and agrees.
    target = target.clamp_max(1)
    expected = smp_losses.FocalLoss("multilabel", alpha=0.25)(logits, target)
    assert FocalLoss("multilabel", alpha=0.25)(logits, target).item() == pytest.approx(
        expected.item(), abs=1e-5
    )


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("per_image", [False, True])
def test_lovasz_matches_smp(mode, per_image):
    logits, target = _batch(mode, dtype=torch.float32)  # smp's Lovász hinge fails on float64
    smp_target = target.unsqueeze(1) if mode == "binary" else target
    expected = smp_losses.LovaszLoss(mode, per_image=per_image, ignore_index=IGNORE_INDEX)(logits, smp_target)
    actual = LovaszLoss(mode, per_image=per_image)(logits, target)
    assert actual.item() == pytest.approx(expected.item(), abs=1e-5)


def test_soft_cross_entropy_and_bce_match_smp_up_to_its_mean_over_ignored_pixels():
    # smp zeroes ignored pixels but still divides by all pixels; we (like torch) divide by the counted ones.
    logits, target = _batch("multiclass")
    valid = (target != IGNORE_INDEX).sum() / target.numel()
    expected = smp_losses.SoftCrossEntropyLoss(smooth_factor=0.1, ignore_index=IGNORE_INDEX)(logits, target)
    assert CrossEntropyLoss(smoothing=0.1)(logits.float(), target).item() == pytest.approx(
        (expected / valid).item(), abs=1e-5
    )
    logits, target = _batch("multilabel")
    valid = (target != IGNORE_INDEX).sum() / target.numel()
    reference = smp_losses.SoftBCEWithLogitsLoss(ignore_index=IGNORE_INDEX, smooth_factor=0.1)
    expected = reference(logits, target.double())
    actual = BCEWithLogitsLoss("multilabel", smoothing=0.1)(logits, target)
    assert actual.item() == pytest.approx((expected / valid).item(), abs=1e-5)


# ---------------------------------------------------------------- torch oracle (exact)
def test_cross_entropy_matches_torch_with_ignored_pixels_class_weights_and_smoothing():
    logits, target = _batch("multiclass", dtype=torch.float32)
    weights = torch.tensor(WEIGHTS)
    for smoothing in (0.0, 0.1):
        ours = CrossEntropyLoss(class_weights=weights, smoothing=smoothing)(logits, target)
        reference = F.cross_entropy(
            logits, target, weight=weights, ignore_index=IGNORE_INDEX, label_smoothing=smoothing
        )
        torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)


@pytest.mark.parametrize("mode", ["binary", "multilabel"])
def test_bce_matches_torch_with_pos_weight_and_class_weights(mode):
    logits, target = _batch(mode, dtype=torch.float32)
    target = target.clamp_max(1)  # torch has no ignore_index: nothing ignored here
    channels = logits.shape[1]
    pos_weight = torch.linspace(0.5, 2.0, channels)
    weights = None if mode == "binary" else torch.tensor(WEIGHTS)
    ours = BCEWithLogitsLoss(mode, class_weights=weights, pos_weight=pos_weight)(logits, target)
    truth = target.view_as(logits).float()
    reference = F.binary_cross_entropy_with_logits(
        logits,
        truth,
        weight=None if weights is None else weights.view(-1, 1, 1),
        pos_weight=pos_weight.view(-1, 1, 1),
    )
    torch.testing.assert_close(ours, reference, rtol=1e-6, atol=0)
    # With ignored pixels: torch's loss on the counted pixels alone.
    logits, target = _batch("binary", dtype=torch.float32)
    keep = target != IGNORE_INDEX
    reference = F.binary_cross_entropy_with_logits(logits[:, 0][keep], target[keep].float())
    torch.testing.assert_close(BCEWithLogitsLoss("binary")(logits, target), reference, rtol=1e-6, atol=0)


def test_cross_entropy_in_binary_and_multilabel_modes_is_bce():
    logits, target = _batch("multilabel")
    assert CrossEntropyLoss("multilabel")(logits, target) == BCEWithLogitsLoss("multilabel")(logits, target)


# ---------------------------------------------------------------- properties
def _perfect_logits(mode: str, target: torch.Tensor) -> torch.Tensor:
    if mode == "multiclass":
        return F.one_hot(target.clamp_max(C - 1), C).permute(0, 3, 1, 2).double() * 40 - 20
    truth = target.clamp_max(1).double()
    return (truth.unsqueeze(1) if mode == "binary" else truth) * 40 - 20


@settings(max_examples=25, deadline=None)
@given(
    name=st.sampled_from(sorted(LOSSES)),
    mode=st.sampled_from(MODES),
    seed=st.integers(0, 2**16),
    all_ignored=st.booleans(),
)
def test_losses_are_non_negative_with_finite_gradients_even_when_everything_is_ignored(
    name, mode, seed, all_ignored
):
    logits, target = _batch(mode, seed)
    if all_ignored:
        target.fill_(IGNORE_INDEX)
    logits.requires_grad_(True)
    loss = LOSSES[name](mode=mode)(logits, target)
    loss.backward()
    assert loss.item() >= 0 and torch.isfinite(loss)
    assert torch.isfinite(logits.grad).all()
    if all_ignored:
        assert loss.item() == 0.0 and (logits.grad == 0).all()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("loss", [DiceLoss, JaccardLoss, TverskyLoss, LovaszLoss])
def test_region_losses_vanish_for_a_perfect_prediction_with_garbage_under_void(mode, loss):
    _, target = _batch(mode)
    logits = _perfect_logits(mode, target)
    logits[..., :2, :] = torch.randn_like(logits[..., :2, :]) * 100  # where the truth is void
    value = loss(mode)(logits, target).item()
    # The Lovász hinge is 0 only once every margin exceeds 1, which ±20 logits satisfy.
    assert value == pytest.approx(0.0, abs=1e-6)


# ---------------------------------------------------------------- build_loss
def test_combined_loss_is_the_sum_of_its_terms_and_finite_on_all_void():
    logits = torch.randn(2, 4, 6, 6, requires_grad=True)
    target = torch.randint(0, 4, (2, 6, 6))
    combined = build_loss("ce+dice")(logits, target)
    expected = F.cross_entropy(logits, target) + DiceLoss()(logits, target)
    assert combined.item() == pytest.approx(expected.item())
    void = torch.full((2, 6, 6), IGNORE_INDEX)
    loss = build_loss({"ce": 1.0, "dice": 0.5})(logits, void)
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(logits.grad).all()


def test_build_loss_takes_a_mode_and_per_loss_options():
    logits, target = _batch("binary")
    loss = build_loss({"focal": 2.0, "tversky": 0.5}, mode="binary", tversky={"alpha": 0.7, "beta": 0.3})
    expected = 2.0 * FocalLoss("binary")(logits, target) + 0.5 * TverskyLoss("binary", alpha=0.7, beta=0.3)(
        logits, target
    )
    assert loss(logits, target).item() == pytest.approx(expected.item())


@pytest.mark.parametrize("mode", ["binary", "multiclass", "multilabel"])
def test_takes_class_weights_says_exactly_which_losses_accept_them(mode):
    """What the plan asks before handing out class weights matches what each loss accepts."""
    from segwise.losses import LOSSES, takes_class_weights

    for name in LOSSES:
        try:
            build_loss(name, mode=mode, **{name: {"class_weights": [1.0, 2.0]}})
            accepted = True
        except SegwiseError:
            accepted = False
        assert takes_class_weights(name, mode) == accepted, name
    assert not takes_class_weights("lovasz", "multilabel") and takes_class_weights("lovasz", "multiclass")


def test_unknown_loss_name_lists_the_choices():
    with pytest.raises(
        SegwiseError, match=r"choose from \['bce', 'ce', 'dice', 'focal', 'jaccard', 'lovasz', 'tversky'\]"
    ):
        build_loss("ce+dcie")


def test_bad_mode_and_options_are_user_errors_that_list_the_choices():
    with pytest.raises(SegwiseError, match=r"choose from \['binary', 'multiclass', 'multilabel'\]"):
        build_loss("dice", mode="multi")
    with pytest.raises(
        SegwiseError, match=r"unknown option \['gama'\] for loss 'focal'; choose from .*'gamma'"
    ):
        build_loss("focal", focal={"gama": 3})
    with pytest.raises(SegwiseError, match=r"options given for \['dice'\]"):
        build_loss("ce", dice={"smooth": 1.0})
