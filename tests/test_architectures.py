"""Every registered architecture: any input size, backward, tracing; parameter counts against smp."""

import pytest
import torch

import segwise
from segwise.errors import SegwiseError


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", segwise.list_models())
def test_forward_backward_at_an_odd_size(arch):
    model = segwise.create_model(arch, encoder="test_resnet", num_classes=4)
    out = model(torch.randn(2, 3, 250, 333))
    assert out.shape == (2, 4, 250, 333)
    out.mean().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())


@pytest.mark.parametrize("arch", segwise.list_models())
def test_jit_trace(arch):
    model = segwise.create_model(arch, encoder="test_resnet", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        assert torch.allclose(traced(x), model(x), atol=1e-5)


def _ratio_to_smp(arch: str, encoder: str, smp_class: str, **options) -> float:
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = getattr(smp, smp_class)(encoder, encoder_weights=None, classes=1)
    model = segwise.create_model(arch, encoder=encoder, num_classes=1, **options)
    return n_parameters(model) / n_parameters(reference)


def test_fpn_resnet34_parameter_count_matches_smp():
    assert _ratio_to_smp("fpn", "resnet34", "FPN") == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("merge_policy", ["add", "cat"])
def test_fpn_merge_policies(merge_policy):
    model = segwise.create_model(
        "fpn", encoder="test_resnet", num_classes=2, decoder_merge_policy=merge_policy
    )
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 3, 50, 70)).shape == (1, 2, 50, 70)


def test_deeplabv3plus_resnet50_parameter_count_matches_smp():
    assert _ratio_to_smp("deeplabv3plus", "resnet50", "DeepLabV3Plus") == pytest.approx(1.0, abs=0.02)


def test_deeplabv3_resnet50_parameter_count_matches_smp():
    assert _ratio_to_smp("deeplabv3", "resnet50", "DeepLabV3") == pytest.approx(1.0, abs=0.02)


@pytest.mark.parametrize("arch", ["deeplabv3", "deeplabv3plus"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_deeplab_output_strides(arch, output_stride):
    model = segwise.create_model(
        arch,
        encoder="test_resnet",
        num_classes=2,
        encoder_output_stride=output_stride,
        decoder_atrous_rates=[2, 4, 6],
    )
    assert model.stride == output_stride
    assert model.encoder(torch.zeros(1, 3, 64, 64))[-1].shape[-1] == 64 // output_stride
    out = model(torch.randn(1, 3, 50, 70))  # training mode, batch of one: the ASPP pooling branch copes
    out.mean().backward()
    assert out.shape == (1, 2, 50, 70)
    config = dict(model.config)
    rebuilt = segwise.create_model(**config.pop("options"), **config)  # as segwise.load does
    assert rebuilt.stride == output_stride


def test_deeplab_mistakes_list_the_valid_choices():
    with pytest.raises(SegwiseError, match=r"output_stride 12 unsupported; choose one of"):
        segwise.create_model("deeplabv3plus", encoder="test_resnet", encoder_output_stride=12)
    with pytest.raises(SegwiseError, match="three positive integers"):
        segwise.create_model("deeplabv3", encoder="test_resnet", decoder_atrous_rates=[6, 12])


def test_linknet_resnet34_parameter_count_matches_smp():
    assert _ratio_to_smp("linknet", "resnet34", "Linknet") == pytest.approx(1.0, abs=0.02)


def test_pspnet_decoder_matches_smp_and_drops_the_unused_encoder_stages():
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = smp.PSPNet("resnet34", encoder_weights=None, classes=1)  # keeps layer3/4 it never runs
    model = segwise.create_model("pspnet", encoder="resnet34", num_classes=1)
    assert n_parameters(model.decoder) == n_parameters(reference.decoder)
    assert model.stride == 8 and len(model.encoder.channels) == 3
    assert n_parameters(model) < n_parameters(reference) / 10


def test_pspnet_encoder_depth_and_batch_of_one():
    model = segwise.create_model("pspnet", encoder="test_resnet", num_classes=2, encoder_depth=5)
    assert model.stride == 32
    out = model(torch.randn(1, 3, 45, 61))  # training mode, batch of one
    out.mean().backward()
    assert out.shape == (1, 2, 45, 61)
    with pytest.raises(SegwiseError, match=r"depth must be in 1..5"):
        segwise.create_model("pspnet", encoder="test_resnet", encoder_depth=7)


def test_cli_lists_the_architectures(capsys):
    from segwise.cli import main

    assert main(["list-models"]) == 0
    assert capsys.readouterr().out.split() == segwise.list_models()
    assert main(["list-models", "deeplab*"]) == 0
    assert capsys.readouterr().out.split() == ["deeplabv3", "deeplabv3plus"]
    assert main(["list-models", "nope*"]) == 2
    assert "there are ['deeplabv3'" in capsys.readouterr().err


def test_fcn_resnet50_decoder_matches_torchvision():
    models = pytest.importorskip("torchvision.models.segmentation")
    reference = models.fcn_resnet50(weights=None, weights_backbone=None, num_classes=1, aux_loss=False)
    model = segwise.create_model("fcn", encoder="resnet50", num_classes=1)
    assert model.stride == 8
    # torchvision's head ends in a 1×1 classifier, ours in the shared 3×3 head
    reference_head = n_parameters(reference.classifier) - n_parameters(reference.classifier[-1])
    assert n_parameters(model.decoder) == reference_head


@pytest.mark.parametrize("size", [(8, 12), (7, 5), (1, 1), (13, 6)])
def test_pspnet_pooling_equals_adaptive_average_pooling(size):
    from segwise.models.pspnet import adaptive_avg_pool2d

    x = torch.randn(2, 4, *size)
    for bins in (1, 2, 3, 6):
        assert torch.allclose(
            adaptive_avg_pool2d(x, bins), torch.nn.functional.adaptive_avg_pool2d(x, bins), atol=1e-6
        )
