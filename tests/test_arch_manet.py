"""MA-Net (`manet`): smp's MAnet function and parameter count, options, other encoders' layouts."""

import pytest
import torch

import segwise
from segwise.errors import SegwiseError
from segwise.models.checkpoints import smp_state_dict
from segwise.models.manet import PositionAttention
from tests.test_architectures import n_parameters


def load_smp_weights(model, reference) -> None:
    """Copy smp's weights into ours (checkpoints.smp_state_dict, what init_from reads); batch-norm
    statistics are drawn at random first, so that a layer reading the wrong ones cannot pass for the
    same function."""
    for key, value in reference.state_dict().items():
        if key.endswith("running_mean"):
            value.normal_()
        elif key.endswith("running_var"):
            value.uniform_(0.5, 2.0)
    model.load_state_dict(smp_state_dict(model, reference))  # strict: every tensor has its counterpart


@pytest.mark.parametrize("upsampling", ["nearest", "bilinear"])
def test_manet_equals_smp_given_the_same_weights(upsampling):
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = smp.MAnet(
        "tu-resnet34", encoder_weights=None, classes=2, decoder_interpolation=upsampling
    ).eval()
    model = segwise.create_model(
        "manet", encoder="resnet34", num_classes=2, decoder_upsampling=upsampling
    ).eval()
    assert n_parameters(model) == n_parameters(reference) == 31_783_778
    load_smp_weights(model, reference)
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model.double()(x), reference.double()(x), atol=1e-9, rtol=0)


def test_position_attention_mixes_every_pixel_with_weights_that_sum_to_one():
    torch.manual_seed(0)
    block = PositionAttention(channels=4, pab_channels=2).double()
    x = torch.randn(1, 4, 3, 5, dtype=torch.float64)
    affinity = torch.einsum("npi,npj->nij", block.query(x).flatten(2), block.key(x).flatten(2))
    weights = affinity.flatten(1).softmax(1).view_as(affinity)
    attended = (weights @ block.value(x).flatten(2).transpose(1, 2)).reshape(1, 4, 3, 5)
    assert torch.allclose(block(x), block.out(x + attended))
    # a change at one pixel reaches every pixel of the output, beyond the 3×3 convolutions' reach
    y = x.clone()
    y[..., 0, 0] += 1.0
    assert (block(y) - block(x))[..., 2, 4].abs().min() > 0


def test_manet_on_an_encoder_that_starts_at_stride_4():
    model = segwise.create_model("manet", encoder="test_convnext", num_classes=3, decoder_pab_channels=8)
    assert model.encoder.reductions[0] == 4
    # the two scales above the shallowest feature have no skip: plain U-Net blocks there
    kinds = [type(block).__name__ for block in model.decoder.blocks]
    assert kinds == ["FusionAttentionBlock"] * 3 + ["UnetBlock"] * 2
    out = model(torch.randn(1, 3, 45, 70))
    assert out.shape == (1, 3, 45, 70)
    out.mean().backward()


def test_manet_option_mistakes_name_the_fix():
    with pytest.raises(SegwiseError, match=r"manet: decoder_upsampling 'transpose' unknown; choose one of"):
        segwise.create_model("manet", encoder="test_resnet", decoder_upsampling="transpose")
    with pytest.raises(SegwiseError, match="manet: decoder_channels needs 5 entries"):
        segwise.create_model("manet", encoder="test_resnet", decoder_channels=[8, 8])
    with pytest.raises(SegwiseError, match="manet: decoder_pab_channels must be a positive integer, got 0"):
        segwise.create_model("manet", encoder="test_resnet", decoder_pab_channels=0)
