"""DPT on plain ViTs: smp's DPT given the same weights, any input size, its options and mistakes; plain ViTs
refused by the pyramid decoders; Swin (channels-last, fixed-size by default) at any size."""

import numpy as np
import pytest
import torch

import segwise
from segwise.errors import SegwiseError
from segwise.models.dpt import DPTDecoder
from segwise.models.encoders import Encoder
from segwise.models.vit import ViTEncoder, uniform_blocks
from tests.test_arch_upernet import _randomise_norms, n_parameters

SMALL = {"decoder_intermediate_channels": [8, 16, 32, 32], "decoder_fusion_channels": 16}
# what smp's DPT holds but never runs: timm's final norms and classifier (it reads the blocks' tokens)
UNUSED_BY_SMP = ("encoder.model.norm.", "encoder.model.fc_norm.", "encoder.model.head")  # DeiT: head_dist


def _smp_dpt(encoder: str, **options) -> torch.nn.Module:
    smp = pytest.importorskip("segmentation_models_pytorch")
    return smp.DPT(f"tu-{encoder}", encoder_weights=None, classes=3, dynamic_img_size=True, **options)


def _load_smp_weights(model: torch.nn.Module, reference: torch.nn.Module) -> None:
    """smp's tensors into ours in registration order (encoder, decoder, head in both), shape by shape."""
    ours = model.state_dict()
    theirs = {k: v for k, v in reference.state_dict().items() if not k.startswith(UNUSED_BY_SMP)}
    assert len(ours) == len(theirs)
    for (key, value), (their_key, their_value) in zip(ours.items(), theirs.items(), strict=True):
        assert value.shape == their_value.shape, (key, their_key)
    model.load_state_dict(dict(zip(ours, theirs.values(), strict=True)))


def test_dpt_parameter_count_equals_smp():
    reference = _smp_dpt("vit_tiny_patch16_224")  # every decoder option at its default
    model = segwise.create_model("dpt", encoder="vit_tiny_patch16_224", num_classes=3)
    unused = sum(p.numel() for k, p in reference.named_parameters() if k.startswith(UNUSED_BY_SMP))
    assert unused == 2 * 192 + 1000 * 192 + 1000  # ViT-Tiny's final LayerNorm and 1000-class head
    assert n_parameters(model) == n_parameters(reference) - unused
    assert n_parameters(model.decoder) + n_parameters(model.head) == n_parameters(
        reference.decoder
    ) + n_parameters(reference.segmentation_head)


# timm's small test ViTs: test_vit has a class token, test_vit2 one prefix token that is not a class token;
# DeiT's distilled ViT two (class and distillation), which `cat` and `add` read differently
@pytest.mark.parametrize(
    "encoder, readout",
    [
        ("test_vit", "cat"),
        ("test_vit", "add"),
        ("test_vit", "ignore"),
        ("test_vit2", "cat"),
        ("deit_tiny_distilled_patch16_224", "cat"),
        ("deit_tiny_distilled_patch16_224", "add"),
    ],
)
def test_dpt_equals_smp_given_the_same_weights(encoder, readout):
    reference = _smp_dpt(encoder, decoder_readout=readout, **SMALL).eval()  # smp's option names
    model = segwise.create_model("dpt", encoder=encoder, num_classes=3, decoder_readout=readout, **SMALL)
    _randomise_norms(reference)
    _load_smp_weights(model.eval(), reference)
    model, reference = model.double(), reference.double()
    x = torch.randn(2, 3, 64, 96, dtype=torch.float64)  # smp's DPT needs a multiple of 2 × 16
    with torch.no_grad():
        assert torch.allclose(model(x), reference(x), atol=1e-6, rtol=0)


def test_dpt_decoder_without_prefix_tokens_equals_smp():
    decoders = pytest.importorskip("segmentation_models_pytorch.decoders.dpt.decoder")
    reference = decoders.DPTDecoder([32] * 4, [16] * 4, False, "cat", [8, 16, 32, 32], 16)
    smp_head = decoders.DPTSegmentationHead(16, 3).head[:4]  # smp's head up to its 1×1 classifier
    ours = DPTDecoder([32] * 4, False, "cat", (8, 16, 32, 32), 16)
    theirs = {**reference.state_dict(), **smp_head.state_dict()}
    ours.load_state_dict(dict(zip(ours.state_dict(), theirs.values(), strict=True)))
    maps = [torch.randn(1, 32, 4, 6) for _ in range(4)]
    with torch.no_grad():
        expected = smp_head.eval()(reference.eval()(maps, [None] * 4))
        assert torch.allclose(ours.eval()((maps, None)), expected, atol=1e-6)


def test_dpt_takes_any_size_even_where_smp_cannot():
    model = segwise.create_model("dpt", encoder="test_vit", num_classes=2, **SMALL)
    assert model.stride == 16  # the patch size: the base model pads to it
    # 48×80 is a 3×5 patch grid: smp's ×2 upsampling of the stride-32 map (2×3) would not meet it
    for size in [(48, 80), (45, 61)]:
        out = model(torch.randn(1, 3, *size))  # training mode, a batch of one
        assert out.shape == (1, 2, *size)
    out.mean().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_vit_encoder_returns_each_blocks_tokens_and_prunes_the_rest():
    assert uniform_blocks(4, 12) == [2, 5, 8, 11] and uniform_blocks(2, 6) == [2, 5]
    encoder = ViTEncoder("test_vit", in_channels=1, depth=2, output_indices=[1, -3])
    assert encoder.indices == [1, 3] and len(encoder.model.blocks) == 4  # blocks 4 and 5 never run
    maps, prefix = encoder(torch.randn(2, 1, 32, 48))
    assert [m.shape for m in maps] == [(2, 64, 2, 3)] * 2
    assert [p.shape for p in prefix] == [(2, 1, 64)] * 2  # the class token of each block
    model = segwise.create_model(
        "dpt", encoder="test_vit", encoder_depth=2, decoder_intermediate_channels=[8, 8]
    )
    assert model(torch.randn(1, 3, 32, 48)).shape == (1, 2, 32, 48)


def test_vit_encoder_weights_from_a_timm_or_an_smp_file(tmp_path):
    timm = pytest.importorskip("timm")
    from safetensors.torch import save_file

    vit = timm.create_model("test_vit")
    save_file(vit.state_dict(), tmp_path / "vit.safetensors")
    smp_file = tmp_path / "smp_dpt.pth"
    torch.save(_smp_dpt("test_vit", **SMALL).state_dict(), smp_file)  # encoder.model.*, decoder.*, ...
    for path, source in [(tmp_path / "vit.safetensors", vit.state_dict()), (smp_file, None)]:
        model = segwise.create_model("dpt", encoder="test_vit", encoder_weights=path, **SMALL)
        source = source or {k.removeprefix("encoder.model."): v for k, v in torch.load(smp_file).items()}
        loaded = model.encoder.model.state_dict()
        assert all(torch.equal(loaded[k], source[k]) for k in loaded)  # every tensor the encoder runs


def test_dpt_default_encoder_is_a_vit():
    assert segwise.models.registry.encoder_name("dpt") == "vit_small_patch16_224"
    assert segwise.models.registry.encoder_name("unet") == "resnet34"


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"decoder_readout": "mean"},
            r"dpt: decoder_readout 'mean' unknown; choose one of \('cat', 'add', 'ignore'\)",
        ),
        ({"decoder_intermediate_channels": [8, 8]}, r"must be 4 positive widths, one per encoder block"),
        ({"decoder_fusion_channels": 0}, r"decoder_fusion_channels must be positive, got 0"),
        ({"encoder_depth": 5}, r"encoder 'test_vit': depth must be in 1..4, got 5"),
        (
            {"encoder_output_indices": [1, 2]},
            r"must name depth=4 blocks; give 4 indices or set encoder_depth=2",
        ),
        ({"encoder_output_indices": [0, 1, 2, 6]}, r"out of range; it has 6 blocks"),
        ({"encoder_output_indices": [3, 1, 2, 5]}, r"must be increasing, shallow to deep"),
    ],
)
def test_dpt_mistakes_name_the_fix(options, message):
    with pytest.raises(SegwiseError, match=message):
        segwise.create_model("dpt", encoder="test_vit", **options)


def test_an_encoder_that_cannot_serve_the_architecture_names_a_working_one():
    with pytest.raises(SegwiseError, match=r"encoder 'test_resnet' is not a plain ViT; .* use another arch"):
        segwise.create_model("dpt", encoder="test_resnet")
    with pytest.raises(SegwiseError, match=r"encoder 'test_convnext' is not a plain ViT"):
        segwise.create_model("dpt", encoder="test_convnext")
    with pytest.raises(
        SegwiseError, match=r"dpt: encoder 'mit_b0' is a hierarchical transformer, not a plain"
    ):
        segwise.create_model("dpt", encoder="mit_b0")
    single_scale = r"encoder 'test_vit' is a single-scale ViT .* use arch dpt, or a hierarchical encoder"
    for arch in ["unet", "upernet"]:
        with pytest.raises(SegwiseError, match=single_scale):
            segwise.create_model(arch, encoder="test_vit")


def test_upernet_on_swin_at_sizes_other_than_its_224():
    model = segwise.create_model(
        "upernet", encoder="swin_tiny_patch4_window7_224", num_classes=2, decoder_channels=16
    )
    assert model.encoder.channels_last and model.encoder.reductions == [4, 8, 16, 32]
    with torch.no_grad():
        # 64×96: a 16×24 grid at stride 4, which 7×7 windows do not tile; 45×61: padded to 64×64 first
        for size in [(64, 96), (45, 61)]:
            assert model.eval()(torch.randn(1, 3, *size)).shape == (1, 2, *size)


@pytest.mark.slow
def test_dpt_trains_and_predicts_at_an_odd_size_with_tta_and_tiles(shapes_data, tmp_path):
    options = {"arch": "dpt", "encoder": "test_vit", "options": SMALL, "batch_size": 4}
    result = segwise.train(shapes_data, runs_dir=tmp_path, name="dpt", epochs=1, progress=False, **options)
    image = np.random.default_rng(0).integers(0, 256, (250, 333, 3), dtype=np.uint8)
    predictor = segwise.load(result.run_dir, device="cpu")
    assert predictor.model.config["arch"] == "dpt"
    assert predictor.predict(image).shape == (250, 333)
    # test-time flips and a sliding window of overlapping tiles, each padded to the patch size
    assert predictor.predict_proba(image, tta="flips", tile=96).shape[-2:] == (250, 333)
    # (ONNX export at two sizes: tests/test_export.py, parametrised over every architecture)


def test_a_fixed_size_model_without_a_dynamic_size_option_is_built_as_it_is():
    # TinyViT's pretrained config says 224×224, but it has no dynamic_img_size option and takes any size
    encoder = Encoder("tiny_vit_5m_224")
    features = encoder(torch.zeros(1, 3, 64, 96))
    assert [f.shape[-1] for f in features] == [96 // r for r in encoder.reductions]
