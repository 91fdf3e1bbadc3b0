"""torchvision's segmentation models as architectures: their state dicts load and give torchvision's
logits; another class count gets a new head; their own backbone; checkpoints read safely."""

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

import segwise
from segwise.errors import SegwiseError, SegwiseWarning
from segwise.models.registry import input_statistics
from segwise.models.torchvision_seg import INPUT_STATISTICS
from tests.conftest import TINY
from tests.test_architectures import n_parameters

segmentation = pytest.importorskip("torchvision.models.segmentation")

SMALL = ["lraspp_mobilenet_v3_large", "deeplabv3_mobilenet_v3_large"]


def torchvision_model(arch: str, num_classes: int = 21, aux_loss: bool = True) -> torch.nn.Module:
    """A randomly initialised torchvision model with trained-looking BatchNorm statistics (so eval mode
    is not an identity), as published: 21 classes, with the auxiliary head where there is one."""
    torch.manual_seed(0)
    options = {} if arch.startswith("lraspp") else {"aux_loss": aux_loss}
    model = getattr(segmentation, arch)(
        weights=None, weights_backbone=None, num_classes=num_classes, **options
    )
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    return model.eval()


def saved(model: torch.nn.Module, path, as_safetensors: bool = False):
    state = model.state_dict()
    if as_safetensors:
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    else:
        torch.save(state, path)
    return path


@pytest.mark.parametrize("arch", [*SMALL, pytest.param("fcn_resnet50", marks=pytest.mark.slow)])
@pytest.mark.parametrize("as_safetensors", [False, True])
def test_a_torchvision_state_dict_loads_and_gives_the_same_logits(arch, as_safetensors, tmp_path):
    reference = torchvision_model(arch)
    path = saved(reference, tmp_path / ("w.safetensors" if as_safetensors else "w.pth"), as_safetensors)
    model = segwise.create_model(arch, num_classes=21, encoder_weights=path).eval()  # aux head dropped
    assert model.stride == (8 if "resnet" in arch else 16)
    x = torch.randn(2, 3, 64, 96)  # a multiple of the stride: torchvision sees the same pixels, unpadded
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x)["out"], rtol=0, atol=1e-5)


def test_the_auxiliary_head_is_kept_key_for_key_when_asked_for(tmp_path):
    arch = "deeplabv3_mobilenet_v3_large"
    reference = torchvision_model(arch)
    path = saved(reference, tmp_path / "w.pth")
    model = segwise.create_model(arch, num_classes=21, encoder_weights=path, decoder_aux_head=True)
    renamed = {
        k.replace("encoder.model.", "backbone.").replace("decoder.", ""): v
        for k, v in model.state_dict().items()
    }
    assert renamed.keys() == reference.state_dict().keys()
    assert all(torch.equal(v, reference.state_dict()[k]) for k, v in renamed.items())
    assert n_parameters(model) == n_parameters(reference)
    # kept for the checkpoint only: the trainer has no auxiliary loss, so it is never run
    model(torch.randn(2, 3, 64, 64)).mean().backward()
    assert all(p.grad is None for p in model.decoder.aux_classifier.parameters())
    without = torchvision_model(arch, aux_loss=False)
    with pytest.raises(
        SegwiseError, match=r"missing 7 key\(s\).*the file has no auxiliary head: drop decoder_aux_head"
    ):
        segwise.create_model(
            arch, encoder_weights=saved(without, tmp_path / "no_aux.pth"), decoder_aux_head=True
        )


@pytest.mark.parametrize("arch", SMALL)
def test_another_class_count_loads_all_but_a_new_head(arch, tmp_path):
    reference = torchvision_model(arch)  # 21 VOC classes, as published
    path = saved(reference, tmp_path / "voc.pth")
    with pytest.warns(
        SegwiseWarning, match=r"voc.pth: scores 21 classes, the model 5: a new head \(classifier"
    ):
        torch.manual_seed(1)
        model = segwise.create_model(arch, num_classes=5, encoder_weights=path).eval()
    torch.manual_seed(1)
    fresh = segwise.create_model(arch, num_classes=5).eval()  # the same draws, no file
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        features = model.encoder(x)
        expected = reference.backbone(x)
        assert torch.equal(features[-1], expected["out" if "deeplab" in arch else "high"])
        assert model(x).shape == (1, 5, 64, 64)
    state, own = reference.state_dict(), model.state_dict()
    head = [
        k
        for k in own
        if k.startswith(("decoder.classifier.4.", "decoder.classifier.low_", "decoder.classifier.high_"))
    ]
    assert head and all(torch.equal(own[k], fresh.state_dict()[k]) for k in head)  # as built: new
    others = [k for k in own if k.startswith("decoder.") and k not in head]
    assert others and all(torch.equal(own[k], state[k.removeprefix("decoder.")]) for k in others)


def test_a_file_of_another_model_names_the_mismatched_keys(tmp_path):
    path = saved(torchvision_model("lraspp_mobilenet_v3_large"), tmp_path / "lraspp.pth")
    with pytest.raises(SegwiseError) as error:
        segwise.create_model("deeplabv3_mobilenet_v3_large", encoder_weights=path)
    message = str(error.value)
    assert message.startswith(f"{path}: weights do not fit deeplabv3_mobilenet_v3_large: missing ")
    assert "unexpected" in message and "classifier.cbr.0.weight" in message
    assert message.endswith(
        "pass a torchvision deeplabv3_mobilenet_v3_large state dict, or its backbone's (mobilenet_v3_large)"
    )
    assert "\n" not in message


@pytest.mark.parametrize(
    ("arch", "classifier"),
    [("lraspp_mobilenet_v3_large", "mobilenet_v3_large"), ("fcn_resnet50", "resnet50")],
)
def test_a_backbone_file_loads_the_encoder_alone(arch, classifier, tmp_path):
    """An ImageNet classifier's state dict (torchvision's `weights_backbone`): the encoder loads, the
    heads start as built."""
    import torchvision

    torch.manual_seed(0)
    backbone = getattr(torchvision.models, classifier)(weights=None)
    path = saved(backbone, tmp_path / f"{classifier}.pth")
    torch.manual_seed(1)
    model = segwise.create_model(arch, num_classes=3, encoder_weights=path)
    torch.manual_seed(1)
    fresh = segwise.create_model(arch, num_classes=3)
    state = backbone.state_dict()
    for key, value in model.encoder.model.state_dict().items():
        assert torch.equal(value, state[key if "resnet" in classifier else "features." + key])
    assert all(torch.equal(v, fresh.decoder.state_dict()[k]) for k, v in model.decoder.state_dict().items())


def test_pickled_code_is_not_run(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(
        torchvision_model("lraspp_mobilenet_v3_large"), path
    )  # a whole pickled module, not a state dict
    with pytest.raises(SegwiseError, match=r"model.pth: cannot read weights"):
        segwise.create_model("lraspp_mobilenet_v3_large", encoder_weights=path)


def test_the_first_convolution_adapts_to_one_channel(tmp_path):
    reference = torchvision_model("lraspp_mobilenet_v3_large")
    path = saved(reference, tmp_path / "w.pth")
    model = segwise.create_model(
        "lraspp_mobilenet_v3_large", in_channels=1, num_classes=21, encoder_weights=path
    )
    first = reference.state_dict()["backbone.0.0.weight"]
    assert torch.allclose(model.state_dict()["encoder.model.0.0.weight"], first.sum(1, keepdim=True))
    gray = torch.rand(1, 1, 64, 64)
    with torch.no_grad():  # a gray image gives the response to its RGB copy
        assert torch.allclose(model.eval()(gray), reference(gray.expand(1, 3, 64, 64))["out"], atol=1e-4)


def test_mistakes_are_one_line_with_the_fix():
    with pytest.raises(
        SegwiseError,
        match=r"fcn_resnet50: builds its own encoder 'resnet50', got encoder 'resnet34'; leave encoder unset \(or use arch fcn or deeplabv3",
    ):
        segwise.create_model("fcn_resnet50", encoder="resnet34")
    with pytest.raises(
        SegwiseError, match=r"lraspp_mobilenet_v3_large: has no auxiliary head in torchvision"
    ):
        segwise.create_model("lraspp_mobilenet_v3_large", decoder_aux_head=True)
    with pytest.raises(SegwiseError, match=r"no ImageNet weights of its own; pass encoder_weights=PATH"):
        segwise.create_model("deeplabv3_mobilenet_v3_large", encoder_weights="imagenet")
    with pytest.raises(SegwiseError, match=r"valid options are \['decoder_aux_head'\]"):
        segwise.create_model("deeplabv3_mobilenet_v3_large", decoder_channels=16)


def test_inputs_are_normalised_as_torchvision_trained_them():
    for arch in ("lraspp_mobilenet_v3_large", "fcn_resnet101"):
        assert input_statistics(arch, None, "voc.pth") == INPUT_STATISTICS
        assert input_statistics(arch, None, None) is None  # from scratch: the data's own statistics


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["fcn_resnet101", "deeplabv3_resnet101", "deeplabv3_resnet50"])
def test_the_big_models_build_with_torchvision_parameters(arch):
    reference = getattr(segmentation, arch)(
        weights=None, weights_backbone=None, num_classes=21, aux_loss=False
    )
    model = segwise.create_model(arch, num_classes=21)
    assert n_parameters(model) == n_parameters(reference)
    assert model.stride == 8 and model.config["encoder"] == arch.rpartition("_")[2]


@pytest.mark.slow
def test_trains_one_epoch_and_predicts_at_an_odd_size(shapes_data, tmp_path):
    result = segwise.train(
        shapes_data,
        runs_dir=tmp_path,
        name="lraspp",
        epochs=1,
        progress=False,
        arch="lraspp_mobilenet_v3_large",
        batch_size=TINY["batch_size"],
    )
    image = np.random.default_rng(0).integers(0, 255, (250, 333, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "odd.png")
    mask = segwise.load(result.run_dir, device="cpu").predict(tmp_path / "odd.png")
    assert mask.shape == (250, 333)
