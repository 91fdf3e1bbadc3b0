import numpy as np
import pytest
import torch
from PIL import Image, ImageFile

import segwise
from segwise.data import load_data
from segwise.data.cache import CACHE_ENV, cache_dirs
from segwise.engine.batches import Batches

from .conftest import TINY, write_pair


@pytest.fixture
def decodes(monkeypatch) -> list[str]:
    """Every pixel decode, whichever reader asks for it: PIL decodes in ImageFile.load."""
    calls: list[str] = []
    original = ImageFile.ImageFile.load

    def counting_load(self):
        if self.tile:  # pixels still to decode (later calls on a loaded image are no-ops)
            calls.append(getattr(self, "filename", "?"))
        return original(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", counting_load)
    return calls


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    folder = tmp_path / "cache"
    monkeypatch.setenv(CACHE_ENV, str(folder))
    return folder


def make_data(root, count=6):
    for index in range(count):
        write_pair(root, f"s{index}", size=(32, 48), mask_values=(0, 2 if index % 2 else 1))
    return root


def test_first_load_decodes_each_file_once_and_later_epochs_decode_nothing(tmp_path, cache_dir, decodes):
    data = load_data(make_data(tmp_path / "data"))
    assert len(decodes) == 12  # 6 images + 6 masks, each once
    assert isinstance(data.train_images, np.memmap) and str(cache_dir) in str(data.train_images.filename)
    decodes.clear()
    batches = Batches(data.train_images, data.train_masks, 1, [0.5] * 3, [0.25] * 3, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        seen = sum(len(masks) for _, masks in batches.epoch(generator, drop_last=True))
        assert seen == len(data.train_images)
    assert decodes == []


def test_a_second_run_on_the_same_data_decodes_nothing_and_sees_the_same_arrays(tmp_path, cache_dir, decodes):
    root = make_data(tmp_path / "data")
    first = load_data(root)
    decodes.clear()
    second = load_data(root)
    assert decodes == []
    assert second.classes == first.classes and second.size == first.size
    assert second.train_pairs == first.train_pairs
    for name in ("train_images", "train_masks", "val_images", "val_masks"):
        assert np.array_equal(getattr(second, name), getattr(first, name))
    uncached = load_data(root, use_cache=False)
    assert len(decodes) == 12 and np.array_equal(uncached.train_images, first.train_images)


def test_training_twice_decodes_only_in_the_first_run(tmp_path, cache_dir, decodes):
    root = make_data(tmp_path / "data")
    segwise.train(root, runs_dir=tmp_path / "runs", epochs=2, progress=False, **TINY)
    assert len(decodes) == 12
    decodes.clear()
    segwise.train(root, runs_dir=tmp_path / "runs", epochs=2, progress=False, **TINY)
    assert decodes == []


def test_a_changed_file_or_option_invalidates_the_entry(tmp_path, cache_dir, decodes):
    root = make_data(tmp_path / "data")
    first = load_data(root)
    image_path = first.train_pairs[0][0]
    Image.fromarray(np.zeros((32, 48, 3), np.uint8)).save(image_path)  # same size on disk is not enough
    decodes.clear()
    second = load_data(root)
    assert len(decodes) == 12
    assert second.train_images[0].max() == 0 and first.train_images[0].max() > 0
    assert len(list(cache_dir.iterdir())) == 1  # the stale version was removed
    decodes.clear()
    load_data(root, size=(32, 32))
    assert len(decodes) == 12 and second.size == (32, 48)
    decodes.clear()
    (root / "classes.txt").write_text("background\nleft\nright\n")
    assert load_data(root).classes.names == ["background", "left", "right"]
    assert len(decodes) == 12


def test_a_torn_entry_is_decoded_again(tmp_path, cache_dir, decodes):
    root = make_data(tmp_path / "data")
    load_data(root)
    (entry,) = cache_dir.iterdir()
    (entry / "train_images.npy").write_bytes(b"not an array")
    decodes.clear()
    data = load_data(root)
    assert len(decodes) == 12 and data.train_images.shape[1:] == (32, 48, 3)


def test_an_unwritable_cache_folder_falls_back_to_memory_with_a_warning(tmp_path, monkeypatch, decodes):
    root = make_data(tmp_path / "data")
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "a_file" / "cache"))  # cannot be created, even by root
    with pytest.warns(UserWarning, match="no writable cache folder"):
        data = load_data(root)
    assert data.train_images.shape[1:] == (32, 48, 3) and not isinstance(data.train_images, np.memmap)


def test_the_data_folder_is_never_written(tmp_path, cache_dir):
    root = make_data(tmp_path / "data")
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    load_data(root)
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_cache_location_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, "off")
    assert cache_dirs() == []
    monkeypatch.delenv(CACHE_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert cache_dirs()[0] == tmp_path / "segwise"


def test_cached_arrays_are_private_to_the_process(tmp_path, cache_dir):
    root = make_data(tmp_path / "data")
    data = load_data(root)
    tensor = torch.from_numpy(data.train_images)  # writable copy-on-write map: no warning, no shared writes
    tensor[0] = 0
    assert load_data(root).train_images[0].max() > 0


def test_training_reads_each_file_once_and_never_again_from_the_cache(tmp_path, cache_dir, monkeypatch):
    """Planning and training find and read the data in one pass: no header pass before the decoding."""
    opened: list[str] = []
    original = Image.open

    def counting_open(path, *args, **kwargs):
        opened.append(str(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(Image, "open", counting_open)
    root = make_data(tmp_path / "data")
    segwise.train(root, runs_dir=tmp_path / "runs", epochs=1, progress=False, val_samples=0, **TINY)
    assert len(opened) == 12 and len(set(opened)) == 12  # 6 images + 6 masks, each opened once
    opened.clear()
    segwise.train(root, runs_dir=tmp_path / "runs", epochs=1, progress=False, val_samples=0, **TINY)
    assert opened == []


def test_resuming_a_run_decodes_nothing(tmp_path, cache_dir, decodes):
    root = make_data(tmp_path / "data")
    run_dir = segwise.train(root, runs_dir=tmp_path / "runs", epochs=1, progress=False, **TINY).run_dir
    decodes.clear()
    segwise.train(resume=run_dir, progress=False)
    assert decodes == []
