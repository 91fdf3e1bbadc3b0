"""UPerNet: smp's UPerNet given the same weights, any timm encoder (ConvNeXt, channels-last), its options."""

import pytest
import torch
import torch.nn.functional as F

import segwise
from segwise.errors import SegwiseError
from segwise.models.checkpoints import smp_state_dict
from segwise.models.encoders import Encoder


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _randomise_norms(model: torch.nn.Module) -> None:
    """Norm layers away from their identity initialisation, so that a misplaced one changes the logits."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d | torch.nn.LayerNorm):
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) / 10)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


@pytest.mark.parametrize("encoder", ["resnet34", "resnet50", "convnext_tiny"])
def test_upernet_parameter_count_equals_smp(encoder):
    smp = pytest.importorskip("segmentation_models_pytorch")
    smp_encoder = encoder if encoder.startswith("resnet") else f"tu-{encoder}"  # smp's own ResNets
    reference = smp.UPerNet(smp_encoder, encoder_weights=None, classes=3)
    model = segwise.create_model("upernet", encoder=encoder, num_classes=3)
    assert n_parameters(model) == n_parameters(reference)
    assert n_parameters(model.decoder) == n_parameters(reference.decoder)


# ConvNeXt's logits on timm's small test_convnext (its features also start at stride 4, with LayerNorm),
# which keeps the test fast; convnext_tiny's parameters are counted above
@pytest.mark.parametrize(
    "encoder, smp_encoder", [("resnet50", "resnet50"), ("test_convnext", "tu-test_convnext")]
)
def test_upernet_equals_smp_given_the_same_weights(encoder, smp_encoder):
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = smp.UPerNet(smp_encoder, encoder_weights=None, classes=3).eval()
    model = segwise.create_model("upernet", encoder=encoder, num_classes=3).eval()
    assert n_parameters(model) == n_parameters(reference)
    _randomise_norms(reference.decoder)
    model.load_state_dict(smp_state_dict(model, reference))
    model, reference = model.double(), reference.double()
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        theirs = reference.segmentation_head[0](reference.decoder(reference.encoder(x)))  # stride 4
        assert torch.allclose(model.head(model.decoder(model.encoder(x))), theirs, atol=1e-9)
        # smp's head then upsamples ×4 with align_corners=True; segwise's base model resizes with
        # align_corners=False (as for every architecture), the one difference
        resized = F.interpolate(theirs, size=x.shape[-2:], mode="bilinear", align_corners=False)
        assert torch.allclose(model(x), resized, atol=1e-9)


def test_upernet_on_a_channels_last_encoder_at_an_odd_size():
    encoder = Encoder("test_mambaout")  # timm gives its features as N×H×W×C
    assert encoder.channels_last
    features = encoder(torch.zeros(1, 3, 64, 96))
    assert [f.shape[1] for f in features] == encoder.channels
    assert [f.shape[-1] for f in features] == [96 // r for r in encoder.reductions]
    model = segwise.create_model("upernet", encoder="test_mambaout", num_classes=2, decoder_channels=16)
    out = model(torch.randn(2, 3, 45, 61))
    out.mean().backward()
    assert out.shape == (2, 2, 45, 61)


def test_upernet_trains_on_a_batch_of_one_and_uses_the_features_from_stride_4():
    model = segwise.create_model("upernet", encoder="test_convnext", num_classes=2, decoder_channels=16)
    assert model.encoder.reductions == [4, 8, 16, 32] and model.decoder.first == 0
    out = model.train()(torch.randn(1, 3, 45, 61))  # the 1-bin pooled map: one value per channel
    out.mean().backward()
    assert out.shape == (1, 2, 45, 61)
    resnet = segwise.create_model("upernet", encoder="test_resnet", decoder_channels=16)
    assert resnet.encoder.reductions[resnet.decoder.first] == 4
    assert len(resnet.decoder.feature_norms) == len(resnet.encoder.reductions) - 1


@pytest.mark.parametrize("norm", ["instancenorm", "identity"])
def test_upernet_norm_options(norm):
    model = segwise.create_model(
        "upernet", encoder="test_resnet", num_classes=2, decoder_channels=16, decoder_use_norm=norm
    )
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.decoder.laterals.modules())
    out = model(torch.randn(1, 3, 37, 53))
    out.mean().backward()
    assert out.shape == (1, 2, 37, 53)


def test_upernet_encoder_depth_and_mistakes():
    shallow = segwise.create_model("upernet", encoder="test_resnet", encoder_depth=3, decoder_channels=16)
    assert shallow.stride == 8 and len(shallow.decoder.feature_norms) == 2
    with pytest.raises(SegwiseError, match=r"upernet: needs at least 2 encoder feature levels at stride 4"):
        segwise.create_model("upernet", encoder="test_resnet", encoder_depth=2)
    with pytest.raises(SegwiseError, match=r"decoder_use_norm 'groupnorm' unknown; choose one of"):
        segwise.create_model("upernet", encoder="test_resnet", decoder_use_norm="groupnorm")
    with pytest.raises(SegwiseError, match=r"decoder_channels must be positive, got 0"):
        segwise.create_model("upernet", encoder="test_resnet", decoder_channels=0)
