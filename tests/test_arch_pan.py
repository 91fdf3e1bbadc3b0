"""PAN (`pan`): smp's PAN function and parameter count at output stride 16 and 32, any size, batch of one."""

import pytest
import torch
from torch import nn

import segwise
from segwise.errors import SegwiseError
from tests.test_arch_manet import load_smp_weights
from tests.test_architectures import n_parameters


@pytest.mark.parametrize(("output_stride", "size"), [(16, (128, 256)), (32, (256, 256))])
def test_pan_equals_smp_given_the_same_weights(output_stride, size):
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = smp.PAN(
        "tu-resnet34", encoder_weights=None, classes=2, encoder_output_stride=output_stride
    ).eval()
    model = segwise.create_model(
        "pan", encoder="resnet34", num_classes=2, encoder_output_stride=output_stride
    ).eval()
    assert model.stride == output_stride
    assert n_parameters(model) == n_parameters(reference) == 21_476_105
    load_smp_weights(model, reference)
    # smp's head upsamples ×4 with align_corners=True; segwise's base model upsamples the logits of every
    # architecture with align_corners=False: the reference gets ours, so all else is compared exactly.
    reference.segmentation_head[1] = nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)
    # smp's pyramid needs the deepest map's sides to be multiples of 8, as at these sizes
    x = torch.randn(2, 3, *size, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model.double()(x), reference.double()(x), atol=1e-9, rtol=0)


@pytest.mark.parametrize("size", [(16, 16), (17, 40), (100, 37)])
def test_pan_runs_at_sizes_where_the_deepest_map_is_tiny_or_odd(size):
    model = segwise.create_model("pan", encoder="test_resnet", num_classes=3)
    out = model(torch.randn(2, 3, *size))  # (16, 16): a 1×1 deepest map
    assert out.shape == (2, 3, *size)
    out.mean().backward()


def test_pan_trains_on_a_batch_of_one_where_a_map_has_one_value_per_channel():
    model = segwise.create_model("pan", encoder="test_resnet", num_classes=2).train()
    # the pyramid's global branch, the three GAU gates, and the two 3×3 at 1/8 of a 4×4 deepest map
    single = [model.decoder.pyramid.pooled[1].bn, *(gau.gate[1].bn for gau in model.decoder.gaus)]
    single += [model.decoder.pyramid.down3[1].bn, model.decoder.pyramid.down3[2].bn]
    before = [bn.running_mean.clone() for bn in single]
    model(torch.randn(1, 3, 64, 64)).mean().backward()  # BatchNorm2d would raise here
    # one value per channel carries no statistics: the running ones are used, and kept
    assert all(torch.equal(bn.running_mean, b) for bn, b in zip(single, before, strict=True))
    model(torch.randn(2, 3, 64, 64))  # a real batch: they learn as in any BatchNorm
    assert not any(torch.equal(bn.running_mean, b) for bn, b in zip(single, before, strict=True))


def test_pan_option_mistakes_name_the_fix():
    with pytest.raises(SegwiseError, match="pan: encoder_output_stride must be 16 or 32, got 8"):
        segwise.create_model("pan", encoder="test_resnet", encoder_output_stride=8)
    with pytest.raises(SegwiseError, match=r"pan: decoder_upsampling 'bicubic' unknown; choose one of"):
        segwise.create_model("pan", encoder="test_resnet", decoder_upsampling="bicubic")
    with pytest.raises(SegwiseError, match="pan: decoder_channels must be a positive integer, got 0"):
        segwise.create_model("pan", encoder="test_resnet", decoder_channels=0)
