"""Whole models of smp and transformers from save_pretrained folders (`init_from`): the same logits in
float64, a new head for another class count, mismatches named, pickled weights refused, training from one."""

import json

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

import segwise
from segwise.errors import SegwiseError
from segwise.models.checkpoints import load_checkpoint, read_checkpoint
from tests.conftest import TINY

smp = pytest.importorskip("segmentation_models_pytorch")


def _randomise_norms(model: nn.Module) -> None:
    """Norm layers away from their identity initialisation, so that a misplaced one changes the logits."""
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d | nn.LayerNorm | nn.GroupNorm) and module.weight is not None:
                module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
                module.bias.copy_(torch.rand(module.bias.shape, generator=generator) - 0.5)
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.copy_(torch.randn(module.running_mean.shape, generator=generator) / 10)
                module.running_var.copy_(torch.rand(module.running_var.shape, generator=generator) + 0.5)


def _saved_smp(tmp_path, model_class: str, encoder: str, classes: int = 3, **options):
    torch.manual_seed(0)
    reference = getattr(smp, model_class)(encoder, encoder_weights=None, classes=classes, **options).eval()
    _randomise_norms(reference)
    reference.save_pretrained(tmp_path / model_class)
    return reference, tmp_path / model_class


# smp's tu- timm encoders on timm's tiny test_resnet keep these fast; smp's own resnet18 (torchvision's
# names) and mit_b0 (MiT's) are the other two encoder families. PAN's pyramid pools its deepest map
# thrice: smp's and segwise's agree where its sides are multiples of 8 (16 × 16 here).
SMP_CASES = [
    ("Unet", "resnet18", {"decoder_attention_type": "scse"}),
    ("UnetPlusPlus", "tu-test_resnet", {}),
    ("FPN", "tu-test_resnet", {"decoder_merge_policy": "cat"}),
    ("Linknet", "tu-test_resnet", {}),
    ("PSPNet", "resnet18", {}),  # smp's own encoder keeps the two stages it never runs
    ("DeepLabV3", "tu-test_resnet", {}),
    ("DeepLabV3Plus", "tu-test_resnet", {"encoder_output_stride": 8}),
    ("MAnet", "tu-test_resnet", {"decoder_interpolation": "bilinear"}),
    ("PAN", "tu-test_resnet", {}),
    ("UPerNet", "tu-test_resnet", {"decoder_channels": 32}),
    ("Segformer", "mit_b0", {"decoder_segmentation_channels": 32}),
]


@pytest.mark.parametrize(("model_class", "encoder", "options"), SMP_CASES, ids=[c[0] for c in SMP_CASES])
def test_smp_models_give_the_same_logits(tmp_path, model_class, encoder, options):
    reference, folder = _saved_smp(tmp_path, model_class, encoder, **options)
    model, loaded = load_checkpoint(folder)
    assert loaded["layout"] == f"smp {model_class}" and not loaded["new_head"]
    assert model.config["arch"] == model_class.lower() and model.config["encoder"] == encoder.removeprefix(
        "tu-"
    )
    head = reference.segmentation_head
    if isinstance(head[1], nn.Upsample) and model_class != "Segformer":
        # smp's heads upsample with align_corners=True, segwise's base model (but for segformer) without
        head[1] = nn.Upsample(scale_factor=head[1].scale_factor, mode="bilinear", align_corners=False)
    x = torch.randn(1, 3, *((256, 256) if model_class == "PAN" else (64, 96)), dtype=torch.float64)
    with torch.no_grad():
        ours, theirs = model.eval().double()(x), reference.double()(x)
    assert ours.shape == theirs.shape
    assert (ours - theirs).abs().max() <= 1e-6


def test_another_class_count_gets_a_new_head_and_everything_else_loads(tmp_path):
    reference, folder = _saved_smp(tmp_path, "FPN", "tu-test_resnet", classes=3)
    torch.manual_seed(7)
    model, loaded = load_checkpoint(folder, num_classes=5)
    torch.manual_seed(7)
    fresh = segwise.create_model("fpn", encoder="test_resnet", num_classes=5)
    assert loaded["new_head"] and model.head.out_channels == 5
    # the head is segwise's fresh one (the same draws as a new model's), the rest the checkpoint's
    assert torch.equal(model.head.weight, fresh.head.weight)
    assert not torch.equal(model.decoder.lateral[0].weight, fresh.decoder.lateral[0].weight)
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        model, reference = model.eval().double(), reference.double()
        ours = model.decoder(model.encoder(x))
        assert torch.allclose(ours, reference.decoder(reference.encoder(x)), atol=1e-9)


# ---- transformers --------------------------------------------------------------------------------


def _saved_segformer(tmp_path, classes: int = 3):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.SegformerConfig(num_labels=classes, decoder_hidden_size=32)  # MiT-b0
    reference = transformers.SegformerForSemanticSegmentation(config).eval()
    _randomise_norms(reference)
    reference.save_pretrained(tmp_path / "segformer")
    return reference, tmp_path / "segformer"


def _with_original_eps(reference: nn.Module) -> None:
    """transformers' SegFormer block and stage layer norms take torch's ε = 1e-5; the original code's
    (whose weights transformers' checkpoints are) and segwise's 1e-6. Patch embeddings and attention
    reductions keep 1e-5 in all three."""
    for name, module in reference.named_modules():
        if isinstance(module, nn.LayerNorm) and not ("patch_embeddings" in name or "attention" in name):
            module.eps = 1e-6


def test_transformers_segformer_gives_the_same_logits(tmp_path):
    reference, folder = _saved_segformer(tmp_path)
    model, loaded = load_checkpoint(folder)
    assert (model.config["arch"], model.config["encoder"]) == ("segformer", "mit_b0")
    assert model.config["options"] == {"decoder_segmentation_channels": 32}
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    model, reference = model.eval().double(), reference.double()
    with torch.no_grad():
        theirs = reference(pixel_values=x).logits  # stride 4
        # the layer norms' ε is the one difference, and a small one
        assert 0 < (model.head(model.decoder(model.encoder(x))) - theirs).abs().max() < 1e-3
        _with_original_eps(reference)
        theirs = reference(pixel_values=x).logits
        assert (model.head(model.decoder(model.encoder(x))) - theirs).abs().max() <= 1e-9
        upsampled = F.interpolate(theirs, size=x.shape[-2:], mode="bilinear", align_corners=True)
        assert (model(x) - upsampled).abs().max() <= 1e-9


def test_transformers_segformer_with_a_new_head(tmp_path):
    reference, folder = _saved_segformer(tmp_path, classes=3)
    _with_original_eps(reference)
    torch.manual_seed(7)
    model, loaded = load_checkpoint(folder, num_classes=2)
    torch.manual_seed(7)
    fresh = segwise.create_model(
        "segformer", encoder="mit_b0", num_classes=2, decoder_segmentation_channels=32
    )
    assert loaded["new_head"] and model.head.weight.shape == (2, 32, 1, 1)
    assert torch.equal(model.head.weight, fresh.head.weight)  # segwise's fresh head
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    model, reference = model.eval().double(), reference.double()
    reference.decode_head.classifier = nn.Identity()  # transformers' head up to its classifier
    with torch.no_grad():
        assert torch.allclose(model.decoder(model.encoder(x)), reference(pixel_values=x).logits, atol=1e-9)


def _saved_upernet(tmp_path, classes: int = 3):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    backbone = transformers.ConvNextConfig(  # ConvNeXt-atto, timm's smallest
        depths=[2, 2, 6, 2],
        hidden_sizes=[40, 80, 160, 320],
        out_features=["stage1", "stage2", "stage3", "stage4"],
    )
    config = transformers.UperNetConfig(
        backbone_config=backbone,
        hidden_size=32,
        auxiliary_in_channels=160,
        auxiliary_channels=16,
        num_labels=classes,
    )
    reference = transformers.UperNetForSemanticSegmentation(config).eval()
    _randomise_norms(reference)
    reference.save_pretrained(tmp_path / "upernet")
    return reference, tmp_path / "upernet"


@pytest.mark.parametrize("classes", [3, 4])
def test_transformers_upernet_on_convnext_gives_the_same_logits(tmp_path, classes):
    reference, folder = _saved_upernet(tmp_path)
    model, loaded = load_checkpoint(folder, num_classes=classes)
    assert (model.config["arch"], model.config["encoder"]) == ("upernet", "convnext_atto")
    assert loaded["new_head"] == (classes != 3)
    assert any("auxiliary_head" in note for note in loaded["notes"])
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    model, reference = model.eval().double(), reference.double()
    with torch.no_grad():
        if classes == 3:
            assert (model(x) - reference(pixel_values=x).logits).abs().max() <= 1e-9
        else:  # everything but the head: the decoder's output against transformers' before its classifier
            features = reference.backbone.forward_with_filtered_kwargs(x).feature_maps
            theirs = reference.decode_head.fpn_bottleneck(_upernet_fused(reference.decode_head, features))
            assert torch.allclose(model.decoder(model.encoder(x)), theirs, atol=1e-9)


def _upernet_fused(head, features):
    """transformers' UperNet head up to its last convolution (its forward ends in the classifier)."""
    laterals = [conv(features[i]) for i, conv in enumerate(head.lateral_convs)] + [head.psp_forward(features)]
    for i in range(len(laterals) - 1, 0, -1):
        laterals[i - 1] = laterals[i - 1] + F.interpolate(
            laterals[i], size=laterals[i - 1].shape[2:], mode="bilinear"
        )
    outs = [conv(laterals[i]) for i, conv in enumerate(head.fpn_convs)] + [laterals[-1]]
    outs = [outs[0]] + [F.interpolate(o, size=outs[0].shape[2:], mode="bilinear") for o in outs[1:]]
    return torch.cat(outs, dim=1)


# ---- mistakes ------------------------------------------------------------------------------------


def test_a_key_mismatch_is_named(tmp_path):
    _, folder = _saved_smp(tmp_path, "Linknet", "tu-test_resnet")
    state = load_file(str(folder / "model.safetensors"))
    state["decoder.extra.weight"] = state.pop("decoder.blocks.0.block.0.0.weight")
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(SegwiseError) as caught:
        load_checkpoint(folder)
    message = str(caught.value)
    assert message.startswith(f"{folder / 'model.safetensors'}: weights do not fit segwise's linknet")
    assert "missing 1 key(s), e.g. ['decoder.blocks.0.0.0.weight']" in message
    assert "unexpected 1 key(s), e.g. ['decoder.extra.weight']" in message


def test_pickled_weights_are_refused(tmp_path):
    _, folder = _saved_smp(tmp_path, "Linknet", "tu-test_resnet")
    torch.save(load_file(str(folder / "model.safetensors")), folder / "pytorch_model.bin")
    (folder / "model.safetensors").unlink()
    with pytest.raises(SegwiseError, match=r"pytorch_model.bin: pickled weights are not read .*safetensors"):
        load_checkpoint(folder)


def _folder(tmp_path, config: dict):
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        ({"model_type": "bert"}, "not a layout segwise reads"),
        (
            {"_model_class": "Unet", "encoder_name": "efficientnet-b0", "classes": 2},
            "smp encoder 'efficientnet-b0'",
        ),
        ({"_model_class": "DPT", "encoder_name": "tu-resnet18", "classes": 2}, "smp's DPT has no segwise"),
        (
            {"_model_class": "Unet", "encoder_name": "resnet18", "classes": 2, "encoder_depth": 4},
            r"smp Unet with encoder_depth=4 has no segwise counterpart",
        ),
        ({"model_type": "upernet", "backbone_config": {"model_type": "swin"}}, "'swin' backbone"),
    ],
)
def test_layouts_segwise_cannot_build_are_named(tmp_path, config, expected):
    with pytest.raises(SegwiseError, match=expected) as caught:
        read_checkpoint(_folder(tmp_path, config))
    assert str(caught.value).startswith(str(tmp_path / "config.json"))


def test_a_sharded_index_may_not_point_outside_its_folder(tmp_path):
    folder = _folder(tmp_path, {"_model_class": "Linknet", "encoder_name": "tu-test_resnet", "classes": 2})
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "../secret.safetensors"}})
    )
    with pytest.raises(SegwiseError, match=r"shards must be files of its own folder"):
        load_checkpoint(folder)


# ---- training ------------------------------------------------------------------------------------


def _tiny_smp_unet(tmp_path):
    """A tiny smp U-Net on timm's test_resnet, with TINY's decoder, 3 classes (the shapes data has 5)."""
    reference = smp.Unet(
        "tu-test_resnet",
        encoder_weights=None,
        classes=3,
        decoder_channels=TINY["options"]["decoder_channels"],
    )
    reference.save_pretrained(tmp_path / "smp_unet")
    return tmp_path / "smp_unet"


@pytest.mark.slow  # one epoch of a tiny U-Net, a few seconds on 2 cores
def test_training_starts_from_the_checkpoint_and_records_it(shapes_data, tmp_path):
    folder = _tiny_smp_unet(tmp_path)
    result = segwise.train(
        shapes_data,
        runs_dir=tmp_path / "runs",
        epochs=1,
        progress=False,
        init_from=str(folder),
        batch_size=TINY["batch_size"],
    )
    recorded = segwise.config.RunConfig.load(result.run_dir / "config.yaml")
    assert (recorded.model["arch"], recorded.model["encoder"]) == ("unet", "test_resnet")
    assert recorded.model["options"]["decoder_channels"] == TINY["options"]["decoder_channels"]
    loaded = recorded.data["init_from"]
    assert loaded["layout"] == "smp Unet" and loaded["new_head"] and loaded["path"] == str(folder)
    assert recorded.data["encoder_weights"] == str(folder)
    for file in folder.iterdir():  # the finished run needs none of the checkpoint
        file.unlink()
    assert segwise.load(result.run_dir, device="cpu").model.num_classes == 5


def test_a_given_architecture_that_contradicts_the_checkpoint_stops_the_run(shapes_data, tmp_path):
    folder = _tiny_smp_unet(tmp_path)
    with pytest.raises(
        SegwiseError, match=r"init_from is smp Unet, unet on test_resnet; arch 'fpn' .*contradict"
    ):
        segwise.train(shapes_data, runs_dir=tmp_path / "runs", epochs=1, init_from=str(folder), arch="fpn")


def test_the_cli_names_a_contradicting_flag_in_one_line(shapes_data, tmp_path, capsys):
    from segwise.cli import main

    folder = _tiny_smp_unet(tmp_path)
    code = main(
        ["train", str(shapes_data), "--init-from", str(folder), "--encoder", "resnet18", "--epochs", "1"]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(
        f"segwise: error: {folder}: init_from is smp Unet, unet on test_resnet; encoder 'resnet18'"
    )


def test_a_segwise_run_folder_loads_with_its_own_logits_or_a_new_head(trained_run):
    own = segwise.load(trained_run, device="cpu").model
    model, loaded = load_checkpoint(trained_run)
    assert loaded["layout"] == "segwise run" and not loaded["new_head"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), own.eval()(x))
    model, loaded = load_checkpoint(trained_run, num_classes=own.num_classes + 1)
    assert loaded["new_head"] and model.head.out_channels == own.num_classes + 1
    trained = own.state_dict()
    assert all(torch.equal(v, trained[k]) for k, v in model.state_dict().items() if not k.startswith("head."))


def test_a_segwise_save_pretrained_folder_loads_with_its_own_logits(trained_run, tmp_path):
    predictor = segwise.load(trained_run, device="cpu")
    folder = predictor.save_pretrained(tmp_path / "shared")
    model, loaded = load_checkpoint(folder)
    assert loaded["layout"] == "segwise run" and not loaded["new_head"]
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), predictor.model.eval()(x))
