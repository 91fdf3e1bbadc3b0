"""Pretrained encoder weights: real ImageNet files, local caches with the network gone, checkpoints of other
libraries, the in-order mapping, the preprocessing that travels with the weights, and trained runs that
never reach for the hub."""

from __future__ import annotations

import logging
import shutil
import socket
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import timm
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file, save_file

import segwise
from segwise.errors import SegwiseError
from segwise.models import encoders
from segwise.models.encoders import Encoder, encoder_preprocessing, has_published_weights, imagenet_weights

WEIGHTS = Path(__file__).parents[2] / "shared" / "weights"
needs_weights = pytest.mark.skipif(
    not (WEIGHTS / "tf_efficientnet_lite0.safetensors").is_file(),
    reason=f"real ImageNet weights not found at {WEIGHTS} (only on the development machine)",
)


@pytest.fixture
def no_network(monkeypatch):
    """Every TCP connection fails at once, as on a machine without a network; the attempts are recorded.
    HF_HUB_OFFLINE is unset, so nothing but the missing network keeps the code off the hub."""
    attempts: list[object] = []

    def refuse(*args, **kwargs):
        attempts.append(args[0] if args else kwargs)
        raise OSError("network unreachable (test)")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", lambda self, address: refuse(address))
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    return attempts


@pytest.fixture
def empty_caches(monkeypatch, tmp_path):
    """huggingface_hub's and torch hub's caches in empty temporary folders; returns (HF_HOME, TORCH_HOME)."""
    hf_home, torch_home = tmp_path / "hf", tmp_path / "torch"
    monkeypatch.setenv("HF_HOME", str(hf_home))
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        monkeypatch.delenv(name, raising=False)
    return hf_home, torch_home


def put_in_hf_cache(hf_home: Path, hub_id: str, filename: str, state: dict) -> Path:
    """A file where huggingface_hub's cache keeps `hub_id`'s `filename` at revision main."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{hub_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    path = repo / "snapshots" / commit / filename
    path.parent.mkdir(parents=True)
    if filename.endswith(".safetensors"):
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def assert_holds(encoder: Encoder, state: dict) -> None:
    """Every tensor of the encoder is the state dict's tensor of that name."""
    own = encoder.model.state_dict()
    assert own and set(own) <= set(state)
    assert all(torch.equal(own[key], state[key]) for key in own)


def sample_images(count: int = 3, size: int = 224) -> torch.Tensor:
    """Smooth colour gradients with a few discs: image-like input, normalized with mean = std = 0.5."""
    y, x = torch.meshgrid(torch.linspace(0, 1, size), torch.linspace(0, 1, size), indexing="ij")
    images = []
    for i in range(count):
        disc = (((x - 0.3 - 0.2 * i) ** 2 + (y - 0.5) ** 2) < 0.05).float()
        images.append(torch.stack([x * (i + 1) / count, y, torch.clamp(disc + 0.2 * i, 0, 1)]))
    return (torch.stack(images) - 0.5) / 0.5


# --- real ImageNet weights -----------------------------------------------------------------------------


@needs_weights
@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "tf_efficientnet_lite2"])
def test_shared_imagenet_weights_give_timms_imagenet_logits(name):
    path = WEIGHTS / f"{name}.safetensors"
    state = load_file(str(path))
    full = timm.create_model(name)
    full.load_state_dict(state)
    full.eval()
    encoder = Encoder(name, weights=path).eval()
    assert_holds(encoder, state)
    assert {k for k in state if k not in encoder.model.state_dict()} == {
        k for k in state if k.split(".")[0] in ("conv_head", "bn2", "classifier")
    }
    x = sample_images()
    with torch.no_grad():
        deepest = encoder(x)[-1]
        logits = full.forward_head(full.bn2(full.conv_head(deepest)))
        expected = full(x)
    assert torch.allclose(logits, expected, atol=1e-5, rtol=1e-5)
    assert torch.equal(logits.argmax(1), expected.argmax(1))
    assert encoder_preprocessing(name, path) == ([0.5] * 3, [0.5] * 3)


def test_timms_warning_about_the_dropped_head_stays_off_the_terminal(tmp_path, caplog, capsys):
    # An EfficientNet features model has no conv_head/bn2/classifier: timm warns about them on every load.
    reference = timm.create_model("test_efficientnet")
    save_file(reference.state_dict(), str(tmp_path / "w.safetensors"))
    with caplog.at_level(logging.DEBUG, logger="timm"):
        encoder = Encoder("test_efficientnet", weights=tmp_path / "w.safetensors")
    assert_holds(encoder, reference.state_dict())
    assert not [r for r in caplog.records if "Unexpected keys" in r.getMessage()]
    assert "Unexpected keys" not in capsys.readouterr().err


# --- ImageNet weights from the local caches, with no network --------------------------------------------


def test_imagenet_loads_from_the_huggingface_cache_with_no_network(no_network, empty_caches, caplog):
    reference = timm.create_model("test_resnet")
    path = put_in_hf_cache(
        empty_caches[0], "timm/test_resnet.r160_in1k", "model.safetensors", reference.state_dict()
    )
    found = imagenet_weights("test_resnet")
    assert found.available and found.where == f"cache {path}" and found.reason == ""
    model = segwise.create_model("unet", encoder="test_resnet", encoder_weights="imagenet")
    assert_holds(model.encoder, reference.state_dict())
    # timm's pytorch_model.bin, the name its hub loader falls back to; its head is dropped without a word
    efficientnet = timm.create_model("test_efficientnet")
    put_in_hf_cache(
        empty_caches[0], "timm/test_efficientnet.r160_in1k", "pytorch_model.bin", efficientnet.state_dict()
    )
    with caplog.at_level(logging.DEBUG, logger="timm"):
        encoder = Encoder("test_efficientnet", in_channels=3, weights="imagenet")
    assert_holds(encoder, efficientnet.state_dict())
    assert not [r for r in caplog.records if "Unexpected keys" in r.getMessage()]
    assert no_network == []


def test_imagenet_loads_from_torch_hubs_checkpoints_folder_with_no_network(no_network, empty_caches):
    reference = timm.create_model("resnet18")
    url = timm.models.get_pretrained_cfg("resnet18").url
    checkpoints = empty_caches[1] / "hub" / "checkpoints"
    checkpoints.mkdir(parents=True)
    torch.save(reference.state_dict(), checkpoints / Path(url).name)
    found = imagenet_weights("resnet18")
    assert found.available and found.where == f"cache {checkpoints / Path(url).name}"
    assert_holds(Encoder("resnet18", weights="imagenet"), reference.state_dict())
    assert no_network == []


def test_imagenet_without_cache_or_network_is_refused_quickly_with_the_fix(no_network, empty_caches):
    started = time.monotonic()
    found = imagenet_weights("test_resnet")
    assert not found.available and "huggingface.co is unreachable" in found.reason
    with pytest.raises(SegwiseError, match=r"encoder_weights=PATH/test_resnet\.safetensors") as error:
        segwise.create_model("unet", encoder="test_resnet", encoder_weights="imagenet")
    assert time.monotonic() - started < 5  # an upper bound: the limit for resolving offline
    assert "\n" not in str(error.value) and len(no_network) == 2  # one check each, no retries
    with pytest.raises(SegwiseError, match=r"vgg16_bn.*unreachable.*encoder_weights=PATH"):
        segwise.create_model("segnet", encoder_weights="imagenet")  # segnet's own VGG encoder alike


def test_hf_hub_offline_means_no_connection_attempt(no_network, empty_caches, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    found = imagenet_weights("resnet18")
    assert not found.available and "HF_HUB_OFFLINE" in found.reason and "encoder_weights=PATH" in found.reason
    assert no_network == []


def test_a_reachable_hub_is_where_the_weights_come_from(empty_caches, monkeypatch):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: SimpleNamespace(close=lambda: None))
    assert imagenet_weights("test_resnet") == encoders.ImagenetWeights(True, "hub huggingface.co")


def test_published_weights_are_known_by_name():
    assert has_published_weights("resnet34") and has_published_weights("resnet34.a1_in1k")
    assert not has_published_weights("resnet34.no_such_tag") and not has_published_weights("no_such_model")
    found = imagenet_weights("no_such_model")
    assert not found.available and "encoder_weights=None" in found.reason


# --- the preprocessing that goes with the weights ---------------------------------------------------------


def test_preprocessing_comes_from_the_file_then_timms_config(tmp_path, monkeypatch):
    state = timm.create_model("test_resnet").state_dict()
    save_file(
        state, str(tmp_path / "own.safetensors"), metadata={"mean": "[0.1, 0.2, 0.3]", "std": "[1, 2, 3]"}
    )
    save_file(state, str(tmp_path / "plain.safetensors"))
    assert encoder_preprocessing("resnet34", tmp_path / "own.safetensors") == (
        [0.1, 0.2, 0.3],
        [1.0, 2.0, 3.0],
    )
    imagenet = ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    assert encoder_preprocessing("resnet34", tmp_path / "plain.safetensors") == imagenet
    assert encoder_preprocessing("resnet34", "imagenet") == imagenet
    assert encoder_preprocessing("resnet34", None) is None
    assert encoder_preprocessing("tf_efficientnet_lite0", "imagenet") == ([0.5] * 3, [0.5] * 3)
    save_file(state, str(tmp_path / "bad.safetensors"), metadata={"mean": "grey", "std": "[1]"})
    with pytest.raises(
        SegwiseError, match=r"bad\.safetensors: metadata mean='grey' is not a list of numbers"
    ):
        encoder_preprocessing("resnet34", tmp_path / "bad.safetensors")
    # A config on a -1..1 input scale: the statistics are rescaled to 0..1 pixels.
    config = SimpleNamespace(mean=(0.0,), std=(1.0,), input_range=(-1.0, 1.0))
    monkeypatch.setattr(encoders, "_pretrained_cfg", lambda name: config)
    assert encoder_preprocessing("anything", "imagenet") == ([0.5], [0.5])


# --- checkpoints of other libraries -----------------------------------------------------------------------


def test_torchvision_resnet34_checkpoints_give_torchvisions_features(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.resnet34().eval()
    with torch.no_grad():  # BatchNorm statistics that are not the identity, so they are compared too
        for module in reference.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    state = reference.state_dict()  # with its classifier `fc`
    save_file(state, str(tmp_path / "tv.safetensors"))
    torch.save({"state_dict": {f"module.model.{k}": v for k, v in state.items()}}, tmp_path / "tv.pth")
    x = torch.randn(2, 3, 96, 128)
    with torch.no_grad():
        stem = reference.relu(reference.bn1(reference.conv1(x)))
        expected, feature = [stem], reference.maxpool(stem)
        for layer in (reference.layer1, reference.layer2, reference.layer3, reference.layer4):
            feature = layer(feature)
            expected.append(feature)
    for path in (tmp_path / "tv.safetensors", tmp_path / "tv.pth"):
        encoder = Encoder("resnet34", weights=path).eval()
        with torch.no_grad():
            features = encoder(x)
        assert len(features) == len(expected)
        assert all(
            torch.allclose(f, e, atol=1e-5, rtol=1e-5) for f, e in zip(features, expected, strict=True)
        )


def test_smp_resnet34_checkpoints_give_smps_features(tmp_path):
    smp = pytest.importorskip("segmentation_models_pytorch")
    whole = smp.Unet("resnet34", encoder_weights=None).eval()
    reference = whole.encoder
    save_file(reference.state_dict(), str(tmp_path / "encoder.safetensors"))
    torch.save(whole.state_dict(), tmp_path / "unet.pth")  # encoder.*, decoder.*, segmentation_head.*
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        expected = reference(x)[1:]  # smp's first feature is the input itself
    for path in (tmp_path / "encoder.safetensors", tmp_path / "unet.pth"):
        encoder = Encoder("resnet34", weights=path).eval()
        with torch.no_grad():
            features = encoder(x)
        assert all(
            torch.allclose(f, e, atol=1e-5, rtol=1e-5) for f, e in zip(features, expected, strict=True)
        )


@pytest.mark.slow  # vgg16_bn: 138 M parameters, built three times
def test_a_torchvision_vgg16_bn_checkpoint_gives_torchvisions_features(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    reference = torchvision.models.vgg16_bn().eval()
    torch.save(reference.state_dict(), tmp_path / "vgg.pth")  # features.* and classifier.* (dropped)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected, feature = [], x
        for layer in reference.features:  # timm's features: the input of each max-pool, then the last
            if isinstance(layer, torch.nn.MaxPool2d):
                expected.append(feature)
            feature = layer(feature)
        expected.append(feature)
        features = Encoder("vgg16_bn", weights=tmp_path / "vgg.pth").eval()(x)
    assert all(torch.allclose(f, e, atol=1e-5, rtol=1e-5) for f, e in zip(features, expected, strict=True))


# --- the in-order mapping ---------------------------------------------------------------------------------


def test_renamed_keys_load_only_in_order_and_are_refused_by_name_otherwise(tmp_path):
    reference = timm.create_model("test_resnet")
    renamed = {f"net.p{i:03d}": v for i, v in enumerate(reference.state_dict().values())}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(SegwiseError) as error:
        segwise.create_model("unet", encoder="test_resnet", encoder_weights=tmp_path / "renamed.pth")
    message = str(error.value)
    assert "missing" in message and "unexpected" in message and "'net.p000'" in message
    assert "encoder_weights_mapping=in_order" in message
    model = segwise.create_model(
        "unet",
        encoder="test_resnet",
        encoder_weights=tmp_path / "renamed.pth",
        encoder_weights_mapping="in_order",
    )
    assert_holds(model.encoder, reference.state_dict())


def test_in_order_refuses_other_architectures_and_unordered_files(tmp_path):
    values = list(timm.create_model("test_resnet").state_dict().values())
    values[0], values[1] = values[1], values[0]  # same count, a shape out of place
    torch.save({f"w{i}": v for i, v in enumerate(values)}, tmp_path / "swapped.pth")
    with pytest.raises(SegwiseError, match=r"stops at tensor \d+: 'w\d+' \[.*\] vs '.*' \[.*\]"):
        Encoder("test_resnet", weights=tmp_path / "swapped.pth", mapping="in_order")
    torch.save(timm.create_model("resnet18").state_dict(), tmp_path / "resnet18.pth")
    with pytest.raises(SegwiseError, match=r"as many tensors as encoder 'test_resnet' has .* got \d+"):
        Encoder("test_resnet", weights=tmp_path / "resnet18.pth", mapping="in_order")
    save_file(timm.create_model("test_resnet").state_dict(), str(tmp_path / "w.safetensors"))
    with pytest.raises(SegwiseError, match=r"\.safetensors does not keep"):
        Encoder("test_resnet", weights=tmp_path / "w.safetensors", mapping="in_order")
    with pytest.raises(SegwiseError, match=r"choose one of \('by_name', 'in_order'\)"):
        Encoder("test_resnet", weights=tmp_path / "w.safetensors", mapping="sideways")


# --- a trained run never needs the network ----------------------------------------------------------------


@pytest.fixture
def imagenet_run(trained_run, tmp_path) -> Path:
    """A copy of the shared run whose config.yaml says its encoder started from ImageNet weights."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = yaml.safe_load((run / "config.yaml").read_text())
    config["model"]["encoder_weights"] = "imagenet"
    (run / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return run


def test_a_trained_run_loads_predicts_evaluates_exports_and_resumes_offline(
    imagenet_run, shapes_data, no_network, empty_caches
):
    from segwise.evaluate import evaluate_run
    from segwise.inference.backends import export_run

    image = np.array(Image.open(sorted((shapes_data / "val" / "images").glob("*.png"))[0]))
    assert segwise.load(imagenet_run, device="cpu").predict(image).shape == image.shape[:2]
    scores = evaluate_run(imagenet_run, shapes_data, split="val", device="cpu", worst=1)
    assert "overall" in scores.metrics
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401

        exported, _ = export_run(imagenet_run, "onnx")
    except ImportError:
        exported, _ = export_run(imagenet_run, "torchscript")
    assert exported.is_file()
    segwise.train(resume=imagenet_run, progress=False)  # finished: rebuilds the model, trains nothing
    assert no_network == []
