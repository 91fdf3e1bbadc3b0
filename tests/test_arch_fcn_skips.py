"""FCN-32s/16s/8s (`fcn32s`, `fcn16s`, `fcn8s`): a skip changes the output only through its score layer."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import segwise
from segwise.errors import SegwiseError
from segwise.models.fcn import FCNSkipDecoder, Upsample2x
from tests.conftest import TINY


def build(arch: str, **options) -> segwise.models.SegmentationModel:
    torch.manual_seed(0)
    return segwise.create_model(arch, encoder="test_resnet", num_classes=3, **options).double().eval()


def upsampled(scores: torch.Tensor, steps: int) -> torch.Tensor:
    for _ in range(steps):
        scores = F.interpolate(scores, scale_factor=2.0, mode="bilinear", align_corners=False)
    return scores


@pytest.mark.parametrize("arch", ["fcn16s", "fcn8s"])
def test_zero_initialised_skip_scores_reproduce_fcn32s_exactly(arch):
    model, fcn32s = build(arch), build("fcn32s")
    skips = model.decoder.skips
    assert all(not s.score.weight.any() and not s.score.bias.any() for s in skips)  # the paper's recipe
    # FCN-32s is the same network without the skips: its every weight is one of the skip model's
    missing, unexpected = fcn32s.load_state_dict(model.state_dict(), strict=False)
    assert not missing and all(k.startswith("decoder.skips.") for k in unexpected)
    x = torch.randn(2, 3, 70, 90, dtype=torch.float64)  # padded to 96×96: the crop is exercised too
    with torch.no_grad():
        assert torch.allclose(model(x), fcn32s(x), rtol=0, atol=1e-12)


def test_each_skip_adds_only_its_own_upsampled_scores():
    model = build("fcn8s")
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        before = model(x)
        features = model.encoder(x)
        for skip in model.decoder.skips:  # stride 16, then stride 8
            torch.nn.init.normal_(skip.score.weight)
            torch.nn.init.normal_(skip.score.bias)
        after = model(x)
        pool4, pool3 = (s.score(features[i]) for s, i in zip(model.decoder.skips, [3, 2], strict=True))
    # the stride-16 scores pass the second learned 2× step (still bilinear) and three fixed ones; the
    # stride-8 scores the three fixed ones; nothing else changes
    expected = upsampled(pool4, 4) + upsampled(pool3, 3)
    assert not torch.allclose(after, before)
    assert torch.allclose(after - before, expected, rtol=0, atol=1e-10)


def test_learned_upsampling_starts_as_bilinear_interpolation_and_learns():
    upsample = Upsample2x(3).double()
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    bilinear = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
    assert torch.allclose(upsample(x), bilinear, rtol=0, atol=1e-14)  # edges included
    assert upsample.conv.weight.requires_grad
    model = segwise.create_model("fcn8s", encoder="test_resnet", num_classes=3)
    model(torch.randn(2, 3, 64, 64)).square().mean().backward()
    for skip in model.decoder.skips:  # zero-initialised scores still learn, as do the 2× steps
        assert skip.score.weight.grad.abs().sum() > 0 and skip.upsample.conv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize(("arch", "skips"), [("fcn32s", 0), ("fcn16s", 1), ("fcn8s", 2)])
def test_variants_differ_by_their_skips_only(arch, skips):
    model = segwise.create_model(arch, encoder="resnet34", num_classes=21)
    assert model.stride == 32 and isinstance(model.head, torch.nn.Identity)  # the decoder scores itself
    assert len(model.decoder.skips) == skips
    # resnet34: 512 → 128 (3×3, BN) → 21 scores; each skip: a 1×1 score layer and a 21×21 4×4 upsampling
    head = 512 * 128 * 9 + 2 * 128 + 128 * 21 + 21
    skip_sizes = [256 * 21 + 21 + 21 * 21 * 16, 128 * 21 + 21 + 21 * 21 * 16][:skips]
    assert sum(p.numel() for p in model.decoder.parameters()) == head + sum(skip_sizes)


def test_an_encoder_without_the_skip_strides_is_refused():
    with pytest.raises(SegwiseError, match=r"fcn8s: needs encoder features at strides \[32, 16, 8\]"):
        FCNSkipDecoder([64, 128, 256], [4, 16, 16], num_classes=2, stride=8)
    with pytest.raises(SegwiseError, match=r"fcn16s: .* the deepest at 32; the encoder gives \[4, 8, 16\]"):
        FCNSkipDecoder([64, 128, 256], [4, 8, 16], num_classes=2, stride=16)
    with pytest.raises(SegwiseError, match=r"unknown option\(s\) \['encoder_output_stride'\]"):
        segwise.create_model("fcn8s", encoder="test_resnet", encoder_output_stride=8)


def test_fcn8s_trains_one_epoch_and_predicts_at_an_odd_size(shapes_data, tmp_path):
    result = segwise.train(
        shapes_data,
        runs_dir=tmp_path,
        name="fcn8s",
        epochs=1,
        progress=False,
        arch="fcn8s",
        encoder=TINY["encoder"],
        options={"decoder_channels": 16},
        batch_size=TINY["batch_size"],
    )
    image = np.random.default_rng(0).integers(0, 255, (250, 333, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "odd.png")
    mask = segwise.load(result.run_dir, device="cpu").predict(tmp_path / "odd.png")
    assert mask.shape == (250, 333)
