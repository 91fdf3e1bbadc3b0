"""The tested encoder list in real architectures, any channel count, first-conv adaptation of weights."""

import pytest
import timm
import torch
from safetensors.torch import save_file

import segwise
from tests.test_architectures import every_architecture, tiny

# (timm name, stride of its first feature); created with random weights. Building the four largest
# takes seconds each (vgg16_bn builds its 100 M-parameter classifier before timm drops it): `slow`.
slow = pytest.mark.slow
ENCODERS = [
    ("resnet18", 2),
    ("resnet34", 2),
    pytest.param("resnet50", 2, marks=slow),
    ("legacy_seresnet34", 2),
    pytest.param("seresnext50_32x4d", 2, marks=slow),
    ("efficientnet_b0", 2),
    ("mobilenetv3_large_100", 2),
    pytest.param("convnext_tiny", 4, marks=slow),
    pytest.param("vgg16_bn", 1, marks=slow),
]
SMALL_DECODERS = {
    "unet": {"decoder_channels": [32, 16, 16, 8, 8]},
    "fpn": {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32},
}


@pytest.mark.parametrize("encoder,first_stride", ENCODERS)
def test_encoder_drives_unet_and_fpn_at_an_odd_size(encoder, first_stride):
    x = torch.randn(1, 3, 70, 90)
    for arch, options in SMALL_DECODERS.items():
        model = segwise.create_model(arch, encoder=encoder, num_classes=3, **options).eval()
        assert model.encoder.reductions[0] == first_stride
        assert model.stride == 32
        with torch.no_grad():
            assert model(x).shape == (1, 3, 70, 90)


@pytest.mark.parametrize("channels", [1, 3, 4, 12])
@pytest.mark.parametrize("arch", every_architecture())
def test_every_architecture_takes_any_channel_count(arch, channels):
    model = tiny(arch, num_classes=2, in_channels=channels).eval()
    with torch.no_grad():
        assert model(torch.randn(1, channels, 40, 56)).shape == (1, 2, 40, 56)


@pytest.mark.parametrize("channels", [1, 4, 12])
def test_pretrained_first_conv_adapts_to_the_channel_count(channels, tmp_path):
    reference = timm.create_model("test_resnet")
    save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    model = segwise.create_model(
        "unet", encoder="test_resnet", in_channels=channels, encoder_weights=tmp_path / "w.safetensors"
    )
    first = next(k for k, v in reference.state_dict().items() if v.ndim == 4)
    rgb = reference.state_dict()[first]
    adapted = model.encoder.model.state_dict()[first]
    if channels == 1:  # one channel: the sum over RGB, so a gray image gives the RGB response
        expected = rgb.sum(1, keepdim=True)
    else:  # RGB filters repeated (R, G, B, R, ...), scaled by 3/C so the activations keep their size
        expected = torch.cat([rgb[:, i % 3 : i % 3 + 1] for i in range(channels)], 1) * 3 / channels
    assert adapted.shape[1] == channels
    assert torch.allclose(adapted, expected)
    later = [k for k in reference.state_dict() if k != first and k in model.encoder.model.state_dict()]
    assert all(torch.equal(model.encoder.model.state_dict()[k], reference.state_dict()[k]) for k in later)
