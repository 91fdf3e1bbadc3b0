"""SegFormer and the Mix Transformer encoders mit_b0 … mit_b5: smp's parameter counts and logits, weights
from SegFormer/smp checkpoints, every decoder on a MiT encoder, training, prediction and export."""

import numpy as np
import pytest
import torch
from PIL import Image

import segwise
from segwise.errors import SegwiseError
from segwise.models.checkpoints import smp_state_dict
from segwise.models.mit import MIT_SIZES
from tests.conftest import TINY


def n_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _smp_segformer(encoder: str, classes: int = 2):
    smp = pytest.importorskip("segmentation_models_pytorch")
    return smp.Segformer(encoder, encoder_weights=None, classes=classes).eval()


@pytest.mark.parametrize("encoder", ["mit_b0", "mit_b2"])
def test_parameter_count_and_names_equal_smps(encoder):
    reference = _smp_segformer(encoder)
    model = segwise.create_model("segformer", encoder=encoder, num_classes=2)
    assert n_parameters(model) == n_parameters(reference)
    assert n_parameters(model.encoder) == n_parameters(reference.encoder)
    # the same names and shapes: smp's (and SegFormer's) mit checkpoints load as they are
    ours = {k: v.shape for k, v in model.encoder.model.state_dict().items()}
    assert ours == {k: v.shape for k, v in reference.encoder.state_dict().items()}


def _load_smp_segformer(model, reference, path) -> None:
    """smp's weights into ours: the encoder from a whole smp model's file (as a user would pass it), the
    rest as init_from maps it (checkpoints.smp_state_dict)."""
    torch.save(reference.state_dict(), path)
    config = dict(model.config)
    loaded = segwise.create_model(**config.pop("options"), **config, encoder_weights=path)
    model.encoder.load_state_dict(loaded.encoder.state_dict())
    state = smp_state_dict(model, reference)
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items() if k.startswith("encoder."))
    model.load_state_dict(state)


@pytest.mark.parametrize("encoder", ["mit_b0"])  # mit_b2 takes 17 s; its parameters are checked above
def test_logits_equal_smps_given_smps_weights(encoder, tmp_path):
    torch.manual_seed(0)
    reference = _smp_segformer(encoder)
    for module in reference.decoder.modules():  # non-trivial batch-norm statistics
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5), module.running_var.uniform_(0.5, 2.0)
    model = segwise.create_model("segformer", encoder=encoder, num_classes=2).eval()
    _load_smp_segformer(model, reference, tmp_path / "smp_segformer.pth")
    x = torch.randn(1, 3, 64, 96, dtype=torch.float64)
    with torch.no_grad():
        ours, theirs = model.double()(x), reference.double()(x)
    assert ours.shape == theirs.shape == (1, 2, 64, 96)
    assert (ours - theirs).abs().max() <= 1e-6


def test_segformer_checkpoint_of_the_original_code_loads_and_adapts_to_the_channel_count(tmp_path):
    from safetensors.torch import save_file

    original = segwise.create_model("segformer", encoder="mit_b0").encoder.model.state_dict()
    original = {k: torch.randn_like(v) for k, v in original.items()}
    # SegFormer's ImageNet file also holds its classifier, which is not part of the encoder
    save_file({**original, "head.weight": torch.zeros(1000, 256)}, str(tmp_path / "mit_b0.safetensors"))
    for channels in (1, 3, 4):
        model = segwise.create_model(
            "segformer",
            encoder="mit_b0",
            in_channels=channels,
            encoder_weights=tmp_path / "mit_b0.safetensors",
        )
        own = model.encoder.model.state_dict()
        assert torch.equal(
            own["block4.1.mlp.dwconv.dwconv.weight"], original["block4.1.mlp.dwconv.dwconv.weight"]
        )
        rgb = original["patch_embed1.proj.weight"]
        expected = {1: rgb.sum(1, keepdim=True), 3: rgb, 4: torch.cat([rgb, rgb[:, :1]], 1) * 3 / 4}[channels]
        assert torch.allclose(own["patch_embed1.proj.weight"], expected)
    # a shallower encoder takes the stages it has from the same file
    shallow = segwise.create_model(
        "pspnet", encoder="mit_b0", encoder_weights=tmp_path / "mit_b0.safetensors"
    )
    assert torch.equal(shallow.encoder.model.state_dict()["norm3.weight"], original["norm3.weight"])


def test_weight_mistakes_end_in_one_line_with_the_fix(tmp_path):
    torch.save(segwise.create_model("segformer", encoder="mit_b0").encoder.state_dict(), tmp_path / "b0.pth")
    with pytest.raises(
        SegwiseError, match=r"b0.pth: weights do not fit encoder 'mit_b2': missing .*wrong shape"
    ):
        segwise.create_model("segformer", encoder="mit_b2", encoder_weights=tmp_path / "b0.pth")
    with pytest.raises(SegwiseError, match=r"no built-in ImageNet weights .*smp-hub/mit_b1.imagenet"):
        segwise.create_model("segformer", encoder="mit_b1", encoder_weights="imagenet")
    with pytest.raises(SegwiseError, match="loads weights by name only"):
        segwise.create_model(
            "segformer",
            encoder="mit_b0",
            encoder_weights=tmp_path / "b0.pth",
            encoder_weights_mapping="in_order",
        )
    # DeepLabV3 dilates its encoder to stride 8 by default; a MiT cannot, and the fix is named
    with pytest.raises(SegwiseError, match="cannot be dilated to output_stride=8.*encoder_output_stride=32"):
        segwise.create_model("deeplabv3", encoder="mit_b0")
    with pytest.raises(SegwiseError, match="decoder_segmentation_channels must be positive"):
        segwise.create_model("segformer", encoder="mit_b0", decoder_segmentation_channels=0)


@pytest.mark.parametrize("name", sorted(MIT_SIZES))
def test_mit_sizes_have_the_papers_encoder_parameter_counts(name):
    papers = {"mit_b0": 3.4, "mit_b1": 13.1, "mit_b2": 24.2, "mit_b3": 44.0, "mit_b4": 60.8, "mit_b5": 81.4}
    with torch.device("meta"):  # no memory, no initialisation: counts only
        model = segwise.create_model("segformer", encoder=name)
    # the paper's Table 1 counts the ImageNet classifier too (at most 0.5 M)
    assert n_parameters(model.encoder) / 1e6 == pytest.approx(papers[name], abs=0.6)
    assert model.encoder.reductions == [4, 8, 16, 32] and model.stride == 32


@pytest.mark.parametrize(
    "arch,options",
    [
        ("unet", {"decoder_channels": [32, 16, 16, 8, 8]}),
        ("fpn", {"decoder_pyramid_channels": 32, "decoder_segmentation_channels": 32}),
        ("deeplabv3plus", {"encoder_output_stride": 32, "decoder_channels": 16}),
        ("pspnet", {"decoder_channels": 16}),
        ("segformer", {"decoder_segmentation_channels": 16}),
    ],
)
def test_a_mit_encoder_drives_other_decoders_at_an_odd_size(arch, options):
    model = segwise.create_model(arch, encoder="mit_b0", num_classes=3, in_channels=2, **options)
    out = model(torch.randn(2, 2, 45, 61))
    out.mean().backward()
    assert out.shape == (2, 3, 45, 61)
    assert all(p.grad is not None for p in model.parameters())
    if arch == "pspnet":  # the first three feature levels only
        assert model.stride == 16 and len(model.encoder.channels) == 3


def test_segformer_on_a_cnn_encoder_uses_every_level_as_smp():
    reference = _smp_segformer("resnet18")
    model = segwise.create_model("segformer", encoder="resnet18", num_classes=2)
    assert len(model.decoder.linear) == 5  # the stride-2 feature too, shrunk to stride 4
    assert n_parameters(model) == n_parameters(reference)


def test_torchscript_export_of_a_mit_runs_at_any_size(tmp_path):
    from segwise.inference.export import check_parity, export_torchscript

    model = segwise.create_model(
        "segformer", encoder="mit_b0", num_classes=3, decoder_segmentation_channels=32
    )
    path = export_torchscript(model, tmp_path / "segformer.pt")
    assert check_parity(model, path, sizes=[(64, 96), (80, 72), (33, 45)], atol=1e-5) <= 1e-5


@pytest.mark.slow  # the exporter takes ~40 s of CPU on a MiT
def test_onnx_export_matches_pytorch_at_two_sizes(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from segwise.inference.export import check_parity, export_onnx

    model = segwise.create_model(
        "segformer", encoder="mit_b0", num_classes=3, decoder_segmentation_channels=32
    )
    path = export_onnx(model, tmp_path / "segformer.onnx")
    assert check_parity(model, path, sizes=[(64, 96), (80, 72)], atol=1e-4) <= 1e-4


@pytest.mark.slow  # about 10 s on 2 cores
def test_trains_one_epoch_and_predicts_at_an_odd_size(shapes_data, tmp_path):
    result = segwise.train(
        shapes_data,
        runs_dir=tmp_path,
        name="segformer",
        epochs=1,
        progress=False,
        arch="segformer",
        encoder="mit_b0",
        options={"decoder_segmentation_channels": 32},
        batch_size=TINY["batch_size"],
    )
    image = np.random.default_rng(0).integers(0, 255, (250, 333, 3), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "odd.png")
    mask = segwise.load(result.run_dir, device="cpu").predict(tmp_path / "odd.png")
    assert mask.shape == (250, 333)
