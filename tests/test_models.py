import socket
import time

import pytest
import timm
import torch
from safetensors.torch import save_file

import segwise
from segwise.errors import SegwiseError


@pytest.mark.parametrize("height,width", [(250, 333), (1, 1), (31, 33), (64, 64), (97, 45)])
def test_any_input_size_gives_logits_of_the_same_size(height, width):
    model = segwise.create_model("unet", encoder="test_resnet", num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, height, width)).shape == (2, 3, height, width)


@pytest.mark.parametrize("channels", [1, 4])
def test_channel_counts_other_than_three(channels):
    model = segwise.create_model("unet", encoder="test_resnet", num_classes=2, in_channels=channels)
    out = model(torch.randn(1, channels, 40, 40))
    out.mean().backward()
    assert out.shape == (1, 2, 40, 40)


def test_wrong_channel_count_says_what_the_model_expects():
    model = segwise.create_model("unet", encoder="test_resnet", num_classes=2, in_channels=1)
    with pytest.raises(ValueError, match="in_channels=1"):
        model(torch.randn(1, 3, 32, 32))


def test_unet_resnet34_has_the_reference_parameter_count():
    # segmentation-models-pytorch's Unet("resnet34", classes=1) has 24,436,369 parameters.
    model = segwise.create_model("unet", encoder="resnet34", num_classes=1)
    assert sum(p.numel() for p in model.parameters()) == 24_436_369


@pytest.mark.parametrize("upsampling", ["nearest", "bilinear", "transpose"])
def test_unet_upsampling_modes(upsampling):
    model = segwise.create_model("unet", encoder="test_resnet", num_classes=2, decoder_upsampling=upsampling)
    assert model(torch.randn(1, 3, 50, 70)).shape == (1, 2, 50, 70)


def test_unknown_names_list_the_valid_choices():
    with pytest.raises(SegwiseError, match=r"unknown architecture .unet9000.; choose one of \[.*'unet'"):
        segwise.create_model("unet9000")
    with pytest.raises(SegwiseError, match="unknown encoder 'resnet3'"):
        segwise.create_model("unet", encoder="resnet3")
    with pytest.raises(SegwiseError, match="valid options are"):
        segwise.create_model("unet", encoder="test_resnet", decoder_chanels=[1])
    with pytest.raises(SegwiseError, match="needs 5 entries"):
        segwise.create_model("unet", encoder="test_resnet", decoder_channels=[8, 8])


def test_local_weights_file_is_loaded_into_the_encoder(tmp_path):
    reference = timm.create_model("test_resnet", num_classes=7)  # a full model, classifier included
    torch.nn.init.constant_(
        reference.conv1[0].weight
        if isinstance(reference.conv1, torch.nn.Sequential)
        else reference.conv1.weight,
        0.125,
    )
    save_file(reference.state_dict(), str(tmp_path / "encoder.safetensors"))
    torch.save(reference.state_dict(), tmp_path / "encoder.pth")
    random = segwise.create_model("unet", encoder="test_resnet", num_classes=2)
    for path in (tmp_path / "encoder.safetensors", tmp_path / "encoder.pth"):
        loaded = segwise.create_model("unet", encoder="test_resnet", num_classes=2, encoder_weights=path)
        state, expected = loaded.encoder.model.state_dict(), reference.state_dict()
        assert all(torch.equal(value, expected[key]) for key, value in state.items())
        assert not all(
            torch.equal(value, random.encoder.model.state_dict()[key]) for key, value in state.items()
        )


def test_weights_for_another_encoder_are_refused_with_the_keys(tmp_path):
    save_file({"something.weight": torch.zeros(3)}, str(tmp_path / "wrong.safetensors"))
    with pytest.raises(
        SegwiseError,
        match=r"wrong.safetensors: weights do not fit encoder 'test_resnet': "
        r"missing \d+ key\(s\).*unexpected 1 key\(s\), e.g. \['something.weight'\]",
    ):
        segwise.create_model("unet", encoder="test_resnet", encoder_weights=tmp_path / "wrong.safetensors")
    other = timm.create_model("resnet18").state_dict()
    torch.save(other, tmp_path / "resnet18.pth")
    with pytest.raises(SegwiseError, match="wrong shape for"):
        segwise.create_model("unet", encoder="test_resnet", encoder_weights=tmp_path / "resnet18.pth")


def test_local_weights_adapt_to_one_channel_by_summing_rgb(tmp_path):
    reference = timm.create_model("test_resnet")
    save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    gray = segwise.create_model(
        "unet", encoder="test_resnet", in_channels=1, encoder_weights=tmp_path / "w.safetensors"
    )
    first = next(k for k, v in reference.state_dict().items() if v.ndim == 4)
    assert torch.allclose(
        gray.encoder.model.state_dict()[first], reference.state_dict()[first].sum(1, keepdim=True)
    )


def test_imagenet_weights_offline_fail_fast_with_the_fix(monkeypatch):
    def unreachable(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", unreachable)
    started = time.perf_counter()
    with pytest.raises(SegwiseError, match="encoder_weights=PATH"):
        segwise.create_model("unet", encoder="resnet18", encoder_weights="imagenet")
    assert time.perf_counter() - started < 5


def test_frozen_encoder_keeps_norm_layers_in_eval_mode():
    model = segwise.create_model("unet", encoder="test_resnet", num_classes=2)
    model.freeze_encoder()
    model.train()
    assert not any(m.training for m in model.encoder.modules())
    assert not any(p.requires_grad for p in model.encoder.parameters())
    assert model.decoder.training
    model.unfreeze_encoder()
    assert all(p.requires_grad for p in model.encoder.parameters()) and model.encoder.training


def test_parameter_groups_hold_every_parameter_once_at_their_learning_rates():
    model = segwise.create_model("unet", encoder="test_resnet", num_classes=2)
    groups = model.parameter_groups(encoder_lr=1e-4, decoder_lr=1e-3)
    assert [(g["name"], g["lr"]) for g in groups] == [("encoder", 1e-4), ("decoder", 1e-3)]
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in model.parameters()) and len(ids) == len(set(ids))
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.encoder.parameters()}
    assert {id(p) for p in model.head.parameters()} <= {id(p) for p in groups[1]["params"]}

    optimizer = torch.optim.SGD(groups, lr=1.0)  # the groups' own rates override the default
    model.freeze_encoder()
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    model(torch.randn(2, 3, 32, 32)).mean().backward()
    optimizer.step()
    changed = {name for name, p in model.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all(not name.startswith("encoder.") for name in changed)
    assert [g["lr"] for g in optimizer.param_groups] == [1e-4, 1e-3]
