"""Every registered architecture: any input size, backward, tracing; parameter counts against smp."""

import pytest
import torch
import torch.nn.functional as F

import segwise
from segwise.errors import SegwiseError
from segwise.models.checkpoints import smp_state_dict
from segwise.models.torchvision_seg import TORCHVISION_MODELS

# The smallest representative configuration of each architecture: timm's tiny `test_resnet` encoder, or
# for those with their own encoder, a narrow 2015 U-Net and the 3-stage SegNet (its VGG16-bn is fixed),
# torchvision's models as they are; dpt reads a plain ViT's tokens: timm's tiny `test_vit`, with a narrow
# decoder.
OWN_ENCODER_OPTIONS = {
    "unet_classic": {"encoder_width": 4},
    "segnet": {"encoder_depth": 3},
    **dict.fromkeys(TORCHVISION_MODELS, {}),
    "dpt": {
        "encoder": "test_vit",
        "decoder_intermediate_channels": [8, 16, 32, 32],
        "decoder_fusion_channels": 16,
    },
}
# torchvision's dilated ResNet-50/101 models take tens of seconds a pass at these sizes on a CPU: the loops
# over every architecture skip them; tests/test_arch_torchvision.py compares them with torchvision, and
# its MobileNetV3 models, which run here, go through the same wrapper.
BIG = sorted(arch for arch, backbone in TORCHVISION_MODELS.items() if backbone.startswith("resnet"))
SKIP_BIG = pytest.mark.skip(reason="a torchvision ResNet model: see tests/test_arch_torchvision.py")


def every_architecture() -> list:
    """`segwise.list_models()` for the loops over every architecture, BIG ones marked skipped."""
    return [pytest.param(arch, marks=SKIP_BIG) if arch in BIG else arch for arch in segwise.list_models()]


def tiny(arch: str, **options) -> segwise.models.SegmentationModel:
    defaults = OWN_ENCODER_OPTIONS.get(arch, {"encoder": "test_resnet"})
    return segwise.create_model(arch, **{**defaults, **options})


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", every_architecture())
def test_forward_backward_at_an_odd_size(arch):
    model = tiny(arch, num_classes=4)
    out = model(torch.randn(2, 3, 250, 333))
    assert out.shape == (2, 4, 250, 333)
    out.mean().backward()
    assert all(p.grad is not None for p in model.decoder.parameters())


@pytest.mark.parametrize("arch", every_architecture())
def test_jit_trace(arch):
    model = tiny(arch, num_classes=3).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        traced = torch.jit.trace(model, x, check_trace=False)
        assert torch.allclose(traced(x), model(x), atol=1e-5)


@pytest.mark.parametrize("arch", every_architecture())
def test_saved_config_rebuilds_the_same_model(arch):
    model = tiny(arch, num_classes=3, in_channels=1)
    config = dict(model.config)
    rebuilt = segwise.create_model(**config.pop("options"), **config)  # as segwise.load does
    rebuilt.load_state_dict(model.state_dict())  # strict: the same parameters and buffers
    x = torch.randn(1, 1, 45, 61)
    with torch.no_grad():
        assert torch.equal(rebuilt.eval()(x), model.eval()(x))


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
    assert capsys.readouterr().out.split() == [
        "deeplabv3",
        "deeplabv3_mobilenet_v3_large",  # torchvision's
        "deeplabv3_resnet101",
        "deeplabv3_resnet50",
        "deeplabv3plus",
    ]
    assert main(["list-models", "fcn*s"]) == 0
    assert capsys.readouterr().out.split() == ["fcn16s", "fcn32s", "fcn8s"]
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


def test_unetplusplus_equals_smp_given_the_same_weights():
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = smp.UnetPlusPlus("resnet34", encoder_weights=None, classes=2).eval()
    model = segwise.create_model("unetplusplus", encoder="resnet34", num_classes=2).eval()
    assert n_parameters(model) == n_parameters(reference)
    model.load_state_dict(smp_state_dict(model, reference))
    # in float64: the decoder sums in another order than smp (phase_conv.py's fast path), so float32
    # differs in the last digits across its 15 blocks; the function itself must be the same
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        assert torch.allclose(model.double()(x), reference.double()(x), atol=1e-9)


def test_unet_scse_attention_equals_smp_given_the_same_weights():
    smp = pytest.importorskip("segmentation_models_pytorch")
    reference = smp.Unet("resnet34", encoder_weights=None, classes=2, decoder_attention_type="scse").eval()
    model = segwise.create_model("unet", encoder="resnet34", num_classes=2, decoder_attention="scse").eval()
    # smp also builds an attention for the last block's missing skip that it never runs
    unused = reference.decoder.blocks[-1].attention1
    assert n_parameters(model) == n_parameters(reference) - n_parameters(unused)
    assert n_parameters(model) / n_parameters(reference) == pytest.approx(1.0, abs=0.02)
    reference.decoder.blocks[-1].attention1 = torch.nn.Identity()
    model.load_state_dict(smp_state_dict(model, reference))
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)  # float64: see the U-Net++ test above
    with torch.no_grad():
        assert torch.allclose(model.double()(x), reference.double()(x), atol=1e-9)


def test_unet_and_unetplusplus_option_mistakes():
    with pytest.raises(
        SegwiseError, match=r"decoder_attention 'cbam' unknown; choose one of \(None, 'scse'\)"
    ):
        segwise.create_model("unetplusplus", encoder="test_resnet", decoder_attention="cbam")
    with pytest.raises(SegwiseError, match="unetplusplus: decoder_channels needs 5 entries"):
        segwise.create_model("unetplusplus", encoder="test_resnet", decoder_channels=[8])


def _paper_unet_parameters(in_channels: int, classes: int) -> int:
    """The 2015 U-Net counted by hand: 3×3 convs without bias + BatchNorm, 2×2 up-convs, our 3×3 head."""

    def double(cin: int, cout: int) -> int:
        return 9 * cin * cout + 2 * cout + 9 * cout * cout + 2 * cout

    widths = [64, 128, 256, 512, 1024]
    encoder = sum(double(cin, cout) for cin, cout in zip([in_channels, *widths[:-1]], widths, strict=True))
    decoder = sum(4 * c * (c // 2) + c // 2 + double(c, c // 2) for c in widths[:0:-1])
    return encoder + decoder + 9 * 64 * classes + classes


def test_unet_classic_is_the_2015_network_for_grayscale_input():
    model = segwise.create_model("unet_classic", num_classes=2, in_channels=1)
    assert n_parameters(model) == _paper_unet_parameters(1, 2) == pytest.approx(31.0e6, rel=0.01)
    assert model.encoder.channels == [64, 128, 256, 512, 1024] and model.stride == 16
    assert model.config["encoder"] == "unet_classic"
    small = segwise.create_model("unet_classic", num_classes=3, in_channels=1, encoder_width=4)
    for upsampling in ("transpose", "bilinear"):
        small = segwise.create_model(
            "unet_classic", num_classes=3, in_channels=1, encoder_width=4, decoder_upsampling=upsampling
        )
        out = small(torch.randn(1, 1, 37, 53))
        out.mean().backward()
        assert out.shape == (1, 3, 37, 53)


def test_own_encoder_architectures_refuse_a_timm_encoder_and_missing_weights():
    with pytest.raises(
        SegwiseError, match="unet_classic: builds its own encoder 'unet_classic', got encoder 'resnet34'"
    ):
        segwise.create_model("unet_classic", encoder="resnet34")
    with pytest.raises(SegwiseError, match="no pretrained weights"):
        segwise.create_model("unet_classic", encoder_weights="imagenet")
    with pytest.raises(SegwiseError, match=r"segnet: encoder_depth must be one of \(3, 4, 5\), got 2"):
        segwise.create_model("segnet", encoder_depth=2)


def test_segnet_vgg16_bn_has_the_papers_parameter_count():
    model = segwise.create_model("segnet", num_classes=12)  # the paper's 11 CamVid classes + void
    assert n_parameters(model) == pytest.approx(29.5e6, rel=0.02)
    assert model.stride == 32 and model.encoder.channels == [64, 128, 256, 512, 512]


def test_segnet_unpooling_places_values_at_the_encoders_argmax():
    from segwise.models.segnet import MaxUnpool2d

    x = torch.tensor([[[[1.0, 5.0, 0.0, 2.0], [3.0, 2.0, 7.0, 1.0]]]])
    pooled, indices = F.max_pool2d(x, 2, return_indices=True)
    assert MaxUnpool2d()(pooled, indices).tolist() == [[[[0.0, 5.0, 0.0, 0.0], [0.0, 0.0, 7.0, 0.0]]]]

    model = tiny("segnet", num_classes=2).eval()
    image = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        before_pool = model.encoder.model[:6](image)  # first stage, up to its max pooling
        features = model.encoder(image)
        unpooled = model.decoder.unpool(features[0], features[len(features) // 2])
    window_max = F.max_pool2d(before_pool, 2)
    at_max = before_pool == F.interpolate(window_max, scale_factor=2.0, mode="nearest")
    assert torch.equal(F.avg_pool2d(unpooled, 2) * 4, window_max)  # each window keeps exactly its max...
    assert not (unpooled != 0)[~at_max].any()  # ...at the position where the encoder found it
    assert (F.avg_pool2d((unpooled != 0).float(), 2) * 4 <= 1).all()


def _vgg16_bn_keys(source: str) -> dict[str, torch.Size]:
    """The key names and shapes of timm's / torchvision's full vgg16_bn, built on the meta device (free)."""
    with torch.device("meta"):
        if source == "timm":
            import timm

            model = timm.create_model("vgg16_bn")
        else:
            model = pytest.importorskip("torchvision.models").vgg16_bn()
    return {key: value.shape for key, value in model.state_dict().items()}


@pytest.mark.parametrize("source", ["timm", "torchvision"])
def test_segnet_loads_vgg16_bn_weights_into_its_encoder(source, tmp_path):
    from safetensors.torch import save_file

    generator = torch.Generator().manual_seed(0)
    state = {  # the feature tensors at their real names; the classifier too, small (it is ignored)
        key: torch.rand(shape if key.startswith("features.") else (2,), generator=generator)
        for key, shape in _vgg16_bn_keys(source).items()
        if shape.numel() and key.split(".")[-1] != "num_batches_tracked"
    }
    save_file(state, str(tmp_path / "vgg16_bn.safetensors"))
    torch.save(state, tmp_path / "vgg16_bn.pth")
    for path in (tmp_path / "vgg16_bn.safetensors", tmp_path / "vgg16_bn.pth"):
        model = segwise.create_model("segnet", encoder_depth=4, num_classes=2, encoder_weights=path)
        own = model.encoder.model.state_dict()
        assert torch.equal(own["0.weight"], state["features.0.weight"])
        assert torch.equal(own["31.running_var"], state["features.31.running_var"])  # last BN of stage 4
    gray = segwise.create_model("segnet", encoder_depth=3, in_channels=1, encoder_weights=path)
    assert torch.allclose(gray.encoder.model[0].weight, state["features.0.weight"].sum(1, keepdim=True))
    four = segwise.create_model("segnet", encoder_depth=3, in_channels=4, encoder_weights=path)
    rgb = state["features.0.weight"]
    assert torch.allclose(four.encoder.model[0].weight, torch.cat([rgb, rgb[:, :1]], 1) * 3 / 4)


def test_segnet_refuses_weights_of_another_network(tmp_path):
    torch.save({"features.0.weight": torch.zeros(8, 3, 3, 3)}, tmp_path / "other.pth")
    with pytest.raises(
        SegwiseError,
        match=r"other.pth: weights do not fit segnet's VGG16-bn encoder: missing \d+ key\(s\).*"
        r"wrong shape for 1 key\(s\), e.g. \['features.0.weight'\]",
    ):
        segwise.create_model("segnet", encoder_depth=3, encoder_weights=tmp_path / "other.pth")


@pytest.mark.parametrize("skip_channels", [0, 3])
def test_conv_after_upsampling_equals_convolving_the_upsampled_concatenation(skip_channels):
    """The decoder's phase-split convolution against its definition, at an odd size, in float64."""
    from segwise.models.phase_conv import conv_after_upsampling

    x = torch.randn(2, 5, 7, 9, dtype=torch.float64)
    skip = torch.randn(2, skip_channels, 14, 18, dtype=torch.float64) if skip_channels else None
    weight = torch.randn(4, 5 + skip_channels, 3, 3, dtype=torch.float64)
    upsampled = F.interpolate(x, scale_factor=2.0, mode="nearest")
    if skip is not None:
        upsampled = torch.cat([upsampled, skip], 1)
    expected = F.conv2d(upsampled, weight, padding=1)
    assert torch.allclose(conv_after_upsampling(x, skip, weight), expected, atol=1e-12)


def _decoder_blocks(model) -> list:
    from segwise.models.unet import UnetBlock

    return [module for module in model.modules() if isinstance(module, UnetBlock)]


def _forward_and_gradients(model, x: torch.Tensor, fast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Logits and parameter gradients of one training-mode step with every decoder block's switch set."""
    for block in _decoder_blocks(model):
        block.fast = fast
    model.zero_grad()
    out = model(x)
    out.square().mean().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("attention", [None, "scse"])
@pytest.mark.parametrize("arch", ["unet", "unetplusplus"])
def test_unet_fast_path_equals_the_plain_path(arch, attention, monkeypatch):
    """UnetBlock.fast (phase convolutions) against fast = False (upsample, concatenate, conv1): the same
    logits and gradients in float64, where the phase sums' other order cannot show."""
    from segwise.models import phase_conv

    model = tiny(arch, num_classes=3, decoder_attention=attention).double()
    x = torch.randn(2, 3, 45, 61, dtype=torch.float64)
    plain, plain_grads = _forward_and_gradients(model, x, fast=False)
    calls = []
    fast_conv = phase_conv.conv_bn_relu
    monkeypatch.setattr(phase_conv, "conv_bn_relu", lambda *args: calls.append(1) or fast_conv(*args))
    fast, fast_grads = _forward_and_gradients(model, x, fast=True)
    assert calls  # the fast path did run (U-Net++'s scSE blocks with a skip take the plain one)
    assert torch.allclose(fast, plain, atol=1e-10)
    assert all(torch.allclose(f, p, atol=1e-10) for f, p in zip(fast_grads, plain_grads, strict=True))


def test_unet_fast_path_never_bypasses_a_hooked_pruned_or_replaced_conv1():
    """The fast path reads conv1's weight instead of calling it: with a hook on conv1 or its conv,
    pruning (a pre-hook), a global hook or a replaced conv, every block must call conv1 as the plain
    path does, and give what the plain path gives."""
    from torch.nn.modules.module import register_module_forward_hook
    from torch.nn.utils import prune

    from segwise.models import phase_conv

    x = torch.randn(1, 3, 32, 48)

    def check(model, fired: list, expected_calls: int) -> None:
        blocks = _decoder_blocks(model)
        assert not any(phase_conv.applies(block.conv1, block.attention1) for block in blocks)
        with torch.no_grad():
            fast = model(x)
            assert len(fired) == expected_calls
            for block in blocks:
                block.fast = False
            assert torch.equal(fast, model(x))  # the same computation as the plain path

    model = tiny("unet", num_classes=2).eval()
    blocks = _decoder_blocks(model)
    assert all(phase_conv.applies(block.conv1, block.attention1) for block in blocks)
    fired = []
    for block in blocks:  # a forward hook on the conv-BN-ReLU and one on its convolution
        block.conv1.register_forward_hook(lambda *_: fired.append("conv1"))
        block.conv1[0].register_forward_hook(lambda *_: fired.append("conv"))
    check(model, fired, 2 * len(blocks))

    model = tiny("unet", num_classes=2).eval()
    unpruned = model(x).detach()
    for block in _decoder_blocks(model):
        prune.l1_unstructured(block.conv1[0], "weight", amount=0.5)  # masks the weight in a pre-hook
    fired = []
    check(model, fired, 0)
    assert not torch.allclose(model(x), unpruned)  # the pruned weights were used

    class CountedConv(torch.nn.Conv2d):  # e.g. a quantisation-aware or instrumented replacement
        def forward(self, input):
            fired.append("replaced")
            return super().forward(input)

    model = tiny("unet", num_classes=2).eval()
    for block in _decoder_blocks(model):
        conv = block.conv1[0]
        block.conv1[0] = CountedConv(conv.in_channels, conv.out_channels, 3, padding=1, bias=False)
    fired = []
    check(model, fired, len(blocks))

    model = tiny("unet", num_classes=2).eval()
    fired = []
    handle = register_module_forward_hook(
        lambda module, *_: fired.append("global") if isinstance(module, torch.nn.Conv2d) else None
    )
    try:
        with torch.no_grad():
            model(x)
        assert len(fired) == sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())
    finally:
        handle.remove()
