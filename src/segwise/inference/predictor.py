"""`segwise.load(run_dir).predict(image)`: masks for new images of any size.

Each image goes through the preprocessing the model was trained with (channels, resize to the training
resolution, normalization); the logits are resized back to the image's own size before the argmax,
so the mask always matches the input pixel for pixel.

The run's task (`config.classes.task`) says how logits become probabilities and masks: a softmax over
classes and the top class, or for a per-label task one independent sigmoid per label, so that
`predict_proba` gives C×H×W probabilities that need not sum to 1 and `predict` a boolean C×H×W stack
(label present where P > 0.5).

Test-time augmentation (`tta=`) and tiles (`tile=`) are options of `predict_proba` (defaults in
`InferenceOptions`). TTA views see the image at the training resolution, like the plain prediction.
Tiles are different: with tiling the image is processed at its native resolution and each tile is fed
at tile size (the model pads to its stride itself), because a huge image shrunk to the training size
keeps nothing of its detail. So tile models trained at the data's own scale (crops or tiles of large
images), and pick a tile at least the training size. Tiling switches on by itself when an image holds
more than `auto_tile_pixels` pixels, with tiles of `AUTO_TILE` pixels a side (`auto_tile`): the models
are fully convolutional, so a tile need not be the training size, and training-size tiles (64×64,
say) would make a large image tens of thousands of small forward passes.

`predict_to_folder` is `segwise predict` on a loaded predictor: inputs to files (`writers`), images too
large for their probabilities to be held whole streamed by tile rows into tiled TIFF masks (`large`),
the run's recorded post-processing, a share of the inputs per process.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from ..calibration import Calibration, with_temperature
from ..config import POLYGON_TOLERANCE, RunConfig
from ..data.dataset import match_channels, resize_image
from ..engine.devices import pick_device
from ..errors import SegwiseError
from ..io import TIFF_SUFFIXES, image_size, make_folder, read_image
from ..models import SegmentationModel
from ..pretrained import RECORDED, known_metrics, save_pretrained
from ..run import load_model
from . import coco, postprocess
from .large import check_mask_classes, open_regions, write_mask_tiff
from .shards import gathered, process_shard, total_over_processes
from .sliding import check_overlap, parse_tile, predict_sliding, sliding_rows, tile_starts
from .tta import DEFAULT_BATCH_PIXELS, check_merge, predict_tta, to_probabilities, views_for
from .tuned import applied_steps
from .uncertainty import view_spread
from .writers import (
    claim_folder,
    collect_inputs,
    output_names,
    parse_formats,
    plan_outputs,
    read_inputs,
    write_outputs,
)

ImageLike = str | Path | np.ndarray | Image.Image

# Side of automatic tiles: a few forward passes per megapixel rather than thousands, and one tile is
# about what `tta.DEFAULT_BATCH_PIXELS` lets a forward pass hold.
AUTO_TILE = 1024
# Full-size float probabilities above this many bytes are not held: the image is streamed by tile rows
# into a tiled TIFF mask (`predict_large_tiff`). 1 GiB is 134 M pixels of two classes (11585²).
STREAM_BYTES = 2**30
MANY_TILES = 16  # an image predicted in at least this many tiles shows a progress bar of its own


@dataclass(frozen=True)
class InferenceOptions:
    """How `predict_proba` runs: TTA views and merge, tiles, and memory budgets."""

    tta: str | tuple[str, ...] = "none"  # none | flips | d4 | scales, or view names (see tta.VIEWS)
    merge: str = "mean"  # mean | gmean | max | vote, over the views' probabilities
    tile: tuple[int, int] | None = None  # H, W; None: whole image at the training size (or automatic)
    overlap: float = 0.25  # share of a tile its neighbour covers
    weighting: str = "gaussian"  # gaussian | constant
    tile_batch: int = 4  # tiles per forward pass
    auto_tile_pixels: int = 4096 * 4096  # images above this are tiled (`auto_tile`) even without `tile`
    max_batch_pixels: int = DEFAULT_BATCH_PIXELS  # pixels per forward pass across TTA views

    def checked(self) -> InferenceOptions:
        """The same options with the tile parsed; a bad value raises SegwiseError naming the flag."""
        views_for(self.tta)
        check_merge(self.merge)
        check_overlap(self.overlap)
        return replace(self, tile=None if self.tile is None else parse_tile(self.tile))


@dataclass
class PredictionReport:
    """What `predict_to_folder` did."""

    files: list[Path] = field(default_factory=list)  # written by this process
    total: int = 0  # files written by all processes together
    threshold: float | None = None  # the decision threshold used; None: the task's default decision
    threshold_file: Path | None = None  # the run's file it came from (threshold.json, postprocess.json)
    skipped: list[tuple[Path, str]] = field(
        default_factory=list
    )  # inputs not predicted, and why (all processes')
    postprocessing: str | None = None  # one line: the recorded post-processing applied, if any


class Predictor:
    """A trained model with its preprocessing and class names.

    `model` is a SegmentationModel or any module with the same contract (normalized N×C×H×W in, logits
    out, an `in_channels` attribute), such as the onnxruntime backend (`inference.backends`).
    `run_dir`: the run folder it was loaded from, where `predict_to_folder` finds a saved threshold.
    """

    def __init__(
        self,
        model: SegmentationModel | torch.nn.Module,
        config: RunConfig,
        device: str = "auto",
        options: InferenceOptions | None = None,
        run_dir: str | Path | None = None,
    ) -> None:
        self.options = (options or InferenceOptions()).checked()
        self.device = pick_device(device)
        self.model = model.to(self.device).eval()
        self.config = config
        self.class_names = config.classes.names
        self.palette = config.classes.palette
        self.task = config.classes.task  # how logits become probabilities and masks
        self.run_dir = None if run_dir is None else Path(run_dir)
        self.calibration = Calibration.load(self.run_dir)  # the temperature shown probabilities get
        self._mean = torch.tensor(config.preprocess.mean, device=self.device).view(1, -1, 1, 1) * 255
        self._std = torch.tensor(config.preprocess.std, device=self.device).view(1, -1, 1, 1) * 255

    def _as_array(self, image: ImageLike) -> np.ndarray:
        if isinstance(image, (str, Path)):
            array = read_image(image)
        elif isinstance(image, Image.Image):
            array = np.asarray(image.convert("RGB") if image.mode not in ("L", "RGB", "RGBA") else image)
        else:
            array = np.asarray(image)
        if array.ndim == 2:
            array = array[..., None]
        if array.dtype != np.uint8 or array.ndim != 3:
            raise ValueError(
                f"expected a uint8 H×W or H×W×C image, got {array.dtype} with shape {array.shape}"
            )
        source = Path(image) if isinstance(image, (str, Path)) else Path("<array>")
        return match_channels(array, self.model.in_channels, source)

    def _logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for images N×C×H×W in 0..255 (any float dtype, any device)."""
        return self.model((images.to(self.device, torch.float32) - self._mean) / self._std).float()

    def tile_predictor(self, options: InferenceOptions):
        """Probabilities B×K×h×w for tiles B×C×h×w (0..255, any dtype): normalization and TTA included."""
        views = views_for(options.tta)
        return lambda tiles: predict_tta(
            self._logits,
            tiles.to(self.device, torch.float32),
            views,
            options.merge,
            self.task.activation,
            max_batch_pixels=options.max_batch_pixels,
        )

    def tile_for(self, height: int, width: int, options: InferenceOptions) -> tuple[int, int] | None:
        """The tile an image of this size is predicted with, or None for the whole image."""
        if options.tile is None and height * width > options.auto_tile_pixels:
            return self.auto_tile()
        return options.tile

    def auto_tile(self) -> tuple[int, int]:
        """The tile used when none is given: `AUTO_TILE` a side, or the training size where larger,
        rounded up to a multiple of the model's stride (its padding would otherwise waste the rest)."""
        stride = getattr(self.model, "stride", 32)
        sides = (max(AUTO_TILE, side) for side in self.config.preprocess.input_size)
        return tuple(-(-side // stride) * stride for side in sides)

    @torch.no_grad()
    def predict_proba(self, image: ImageLike, *, calibrated: bool = True, **options) -> np.ndarray:
        """Class probabilities C×H×W (float32) at the image's own size (a per-label task: one per label).

        Keyword options override the predictor's `InferenceOptions`, e.g. `tta="d4", tile=512`.
        `calibrated`: tempered by the run's calibration.json when it has one (`Predictor.tempered`); decisions
        are made on calibrated=False, the model's own, so masks do not depend on the temperature.
        """
        settings = replace(self.options, **options).checked() if options else self.options
        array = self._as_array(image)
        height, width = array.shape[:2]
        tile = self.tile_for(height, width, settings)
        if tile is not None:
            pixels = torch.from_numpy(array).permute(2, 0, 1)  # stays uint8 on the CPU; tiles move alone
            probs = predict_sliding(
                self.tile_predictor(settings),
                pixels,
                tile,
                settings.overlap,
                settings.weighting,
                settings.tile_batch,
            )
            return self.tempered(probs.cpu().numpy(), calibrated)
        resized = resize_image(array, tuple(self.config.preprocess.input_size))  # exactly as in training
        x = torch.from_numpy(resized).to(self.device).permute(2, 0, 1)[None].float()
        return self.tempered(self._resize_back(self.tile_predictor(settings)(x), height, width), calibrated)

    def tempered(self, probabilities: np.ndarray, calibrated: bool = True) -> np.ndarray:
        """`probabilities` with the run's temperature when `calibrated` and it has one (calibration.py)."""
        temperature = self.calibration.temperature if calibrated and self.calibration else None
        return with_temperature(probabilities, temperature, self.task.activation)

    def _resize_back(self, probs: torch.Tensor, height: int, width: int) -> np.ndarray:
        """1×K×h×w probabilities → K×H×W at the image's size."""
        if probs.shape[-2:] != (height, width):
            # Resized as logits and turned back into probabilities by the run's activation: for a single
            # view this is exactly the activation of the bilinearly resized logits.
            if self.task.activation == "sigmoid":
                # log p − log(1 − p) with p kept float32's eps inside (0, 1), about all 1 − p resolves
                # there: the logits stay finite and symmetric (±16).
                eps = torch.finfo(torch.float32).eps
                logits = probs.clamp(eps, 1 - eps).logit()
            else:
                # log-probabilities, renormalized by the softmax: merged views stay a distribution.
                logits = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()
            resized = F.interpolate(logits, size=(height, width), mode="bilinear", align_corners=False)
            probs = to_probabilities(resized, self.task.activation)
        return probs[0].cpu().numpy()

    @torch.no_grad()
    def predict_proba_batch(
        self, images: Sequence[ImageLike], *, calibrated: bool = True, **options
    ) -> list[np.ndarray]:
        """`[predict_proba(image, **options) for image in images]`, the untiled images in one forward
        pass (TTA views included: they are resized to the training size, so any sizes batch together)."""
        settings = replace(self.options, **options).checked() if options else self.options
        arrays = [self._as_array(image) for image in images]
        results: list[np.ndarray | None] = [None] * len(arrays)
        whole = []
        for index, array in enumerate(arrays):
            if self.tile_for(*array.shape[:2], settings) is None:
                whole.append(index)
            else:  # tiled at native resolution: one image at a time, its tiles batched inside
                results[index] = self.predict_proba(array, calibrated=calibrated, **options)
        if whole:
            size = tuple(self.config.preprocess.input_size)
            x = torch.stack([torch.from_numpy(resize_image(arrays[i], size)) for i in whole])
            probs = self.tile_predictor(settings)(x.to(self.device).permute(0, 3, 1, 2).float())
            for row, index in enumerate(whole):
                results[index] = self.tempered(
                    self._resize_back(probs[row : row + 1], *arrays[index].shape[:2]), calibrated
                )
        return results

    def predict(self, image: ImageLike, **options) -> np.ndarray:
        """Class indices H×W (int64) at the image's own size, for a per-label task a boolean C×H×W stack
        (label present where P > 0.5); options as for `predict_proba`. For other thresholds and
        cleaning, apply `postprocess.Steps(predictor.task, ...)` to `predict_proba`; for the run's
        recorded ones, `tuned.applied_steps(predictor.run_dir, predictor.task, predictor.class_names).steps`."""
        return postprocess.Steps(self.task)(self.predict_proba(image, calibrated=False, **options))

    def predict_large_tiff(
        self,
        source: str | Path,
        target: str | Path,
        options: InferenceOptions | None = None,
        progress: bool = False,
    ) -> Path:
        """Predict an image of any size tile row by tile row and write its mask as a tiled TIFF (see
        `large`), never holding its probabilities whole, nor a TIFF's pixels.

        Tiles default to `auto_tile` (see the module doc on tiles and resolution); TTA applies per
        tile. The mask is the task's default decision. `progress` shows a bar of the tiles when there
        are at least `MANY_TILES`."""
        source, target = Path(source), Path(target)
        settings = (options or self.options).checked()
        size, read = open_regions(source, self.model.in_channels)
        check_mask_classes(source, self.config.classes)
        tile = settings.tile or self.auto_tile()
        count = len(tile_starts(size[0], tile[0], settings.overlap)) * len(
            tile_starts(size[1], tile[1], settings.overlap)
        )
        bar = tqdm(total=count, desc=source.name, unit="tile", disable=not progress or count < MANY_TILES)
        with torch.no_grad(), bar:
            rows = sliding_rows(
                _counted(self.tile_predictor(settings), bar),
                read,
                size,
                tile,
                settings.overlap,
                settings.weighting,
                settings.tile_batch,
            )
            return write_mask_tiff(rows, size, self.config.classes, target)

    def predict_to_folder(
        self,
        inputs: Sequence[str | Path],
        output: str | Path,
        *,
        formats: str | Sequence[str] = ("png",),
        threshold: float | None = None,
        min_size: int | None = None,
        fill_holes: bool = False,
        largest: bool = False,
        crop: bool = False,
        batch_size: int = 1,
        progress: bool = False,
        shard: tuple[int, int] | None = None,
        coco_polygons: bool = False,
        polygon_tolerance: float = POLYGON_TOLERANCE,
        overwrite: bool = False,
        postprocess: bool = True,
    ) -> PredictionReport:
        """Predict every input (files, folders, globs) and write the requested formats into `output`.

        Before anything is written, an output that is an input fails, and without `overwrite` one that
        exists or a dataset's folder (`writers.claim_folder`). Unreadable inputs are the report's `skipped`.

        `formats`: names from `writers.FORMATS`, or one comma-separated string. `threshold` decides and
        `min_size`, `fill_holes`, `largest` clean (`postprocess.Steps`); with `postprocess`, those not
        given are the run's recorded ones (`tuned.applied_steps`), named in the report's `postprocessing`.
        Images too large to hold their probabilities (`_streamed`) are streamed
        into tiled TIFF masks, `<name>.tif`, of the task's default decision (`predict_large_tiff`: the
        formats, threshold and cleaning do not apply to them, nor are they in the COCO file).
        `coco` writes one file for all inputs once they are predicted (`coco.COCO_FILE`): under a
        process group every process sends its records and rank 0 writes it. Its segmentations are RLE,
        or with `coco_polygons` polygons with their holes, simplified by up to `polygon_tolerance`
        pixels (see `coco`).
        `shard=(rank, world_size)` predicts the inputs `rank::world_size` of the sorted list; None: this
        process's torchrun share, or everything.

        >>> segwise.load("runs/cells").predict_to_folder(["new/"], "out", formats=["png", "json"])  # doctest: +SKIP
        """
        formats = parse_formats(formats)
        tolerance = coco.checked_polygon_tolerance(formats, coco_polygons, polygon_tolerance)
        if batch_size < 1:
            raise SegwiseError(f"batch size {batch_size} is not valid; expected an integer ≥ 1")
        given = {"threshold": threshold, "min_size": min_size, "fill_holes": fill_holes, "largest": largest}
        applied = applied_steps(self.run_dir, self.task, self.class_names, **given, recorded=postprocess)
        rank, world_size = shard or process_shard()
        progress = progress and rank == 0  # one process shows the bars
        output = Path(output)
        paths = sorted(collect_inputs(inputs))
        large = [path for path in paths if self._streamed(path)]
        plan = plan_outputs(paths, large, output, formats, crop, self.config.classes)
        claim_folder(plan, overwrite, rank, world_size, gathered)
        regular, files, skipped = plan.regular, [], []  # skipped: (input, why) of those that cannot be read
        if regular:
            make_folder(output)
            coco_names = coco.file_names(regular, output_names(regular)) if "coco" in formats else None
            jobs = list(enumerate(zip(regular, plan.targets, strict=True)))[rank::world_size]
            written, records = self._write_predictions(
                jobs, applied.steps, batch_size, progress, coco_names, tolerance, skipped
            )
            files += written
            if coco_names is not None:
                records = gathered(records)  # every process takes part, also one with an empty share
                if rank == 0:
                    files.append(coco.write_coco(plan.coco_file, records, self.config.classes))
        files += self._write_large(
            list(zip(large, plan.large_targets, strict=True))[rank::world_size], skipped, progress
        )
        total = total_over_processes(len(files))
        return PredictionReport(
            files, total, applied.threshold, applied.threshold_file, gathered(skipped), applied.message
        )

    def save_pretrained(self, folder: str | Path, metrics: dict[str, float] | None = None) -> Path:
        """This predictor's model, classes and preprocessing as a save_pretrained folder (config.json,
        model.safetensors, README.md: see `segwise.pretrained`), with the run's saved threshold. `metrics`
        default to what the run knows (its `segwise eval` results)."""
        if not isinstance(self.model, SegmentationModel):
            raise SegwiseError(
                f"{folder}: save_pretrained needs the PyTorch model; load the run with segwise.load(RUN)"
            )
        recorded = []
        if self.run_dir is not None:
            applied_steps(
                self.run_dir, self.task, self.class_names
            )  # read and checked, then copied as they are
            recorded = [self.run_dir / name for name in RECORDED if (self.run_dir / name).is_file()]
            metrics = known_metrics(self.run_dir) if metrics is None else metrics
        classes, preprocess = self.config.classes, self.config.preprocess
        return save_pretrained(self.model, folder, classes, preprocess, metrics, recorded)

    def _write_large(
        self, jobs: Sequence[tuple[Path, Path]], skipped: list[tuple[Path, str]], progress: bool
    ) -> list[Path]:
        """Predict each (streamed image, its mask's path) with `predict_large_tiff`; returns the masks written.
        One that fails is added to `skipped` as (input, why): one bad slide does not stop the others."""
        written = []
        for path, target in jobs:
            try:
                written.append(self.predict_large_tiff(path, target, progress=progress))
            except SegwiseError as error:
                skipped.append((path, str(error)))
        return written

    def _streamed(self, path: Path) -> bool:
        """Whether `path` is predicted by `predict_large_tiff`: a TIFF above the automatic tiling limit
        (read by region, never whole), or any image whose full-size probabilities would pass
        `STREAM_BYTES`. A file whose header cannot be read is left to the ordinary path to report."""
        try:
            height, width = image_size(path)
        except SegwiseError:
            return False
        if path.suffix.lower() in TIFF_SUFFIXES and height * width > self.options.auto_tile_pixels:
            return True
        return height * width * self.config.classes.num_classes * 4 > STREAM_BYTES

    def _write_predictions(
        self,
        jobs: Sequence[tuple[int, tuple[Path, dict[str, list[Path]]]]],
        steps: postprocess.Steps,
        batch_size: int,
        progress: bool,
        coco_names: Sequence[str] | None,
        polygon_tolerance: float | None,
        skipped: list[tuple[Path, str]],
    ) -> tuple[list[Path], list[tuple[int, dict]]]:
        """Predict the inputs `batch_size` at a time and write each one's files; jobs are (index in the
        input list, (input, format → files)). Returns the files written and, when `coco_names` (the
        inputs' COCO file names) are given, the (index, `coco.image_record`) of every input, its
        objects as polygons when `polygon_tolerance` is given. Inputs that cannot be read are left
        out, each added to `skipped` as (input, why)."""
        classes = self.config.classes
        written: list[Path] = []
        records: list[tuple[int, dict]] = []
        with tqdm(total=len(jobs), desc="predicting", unit="image", disable=not progress, leave=False) as bar:
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start : start + batch_size]
                read = read_inputs([path for _, (path, _) in chunk], self.model.in_channels, skipped)
                batch, images = [job for job in chunk if job[1][0] in read], list(read.values())
                bar.update(len(chunk) - len(batch))  # the skipped ones
                for (index, (path, files)), image, probabilities in zip(
                    batch, images, self.predict_proba_batch(images, calibrated=False), strict=True
                ):
                    mask = steps(probabilities)  # decided on the model's own probabilities
                    probabilities = self.tempered(probabilities)  # written and scored calibrated
                    spread = view_spread(self, image) if "uncertainty" in files else None
                    written += write_outputs(classes, path, image, probabilities, mask, files, spread)
                    if coco_names is not None:
                        record = coco.image_record(
                            coco_names[index], mask, probabilities, classes, polygon_tolerance
                        )
                        records.append((index, record))
                    bar.update()
        return written, records


def _counted(predict_tiles, bar: tqdm):
    """`predict_tiles` that advances `bar` by the tiles it predicted."""

    def predict(tiles: torch.Tensor) -> torch.Tensor:
        probs = predict_tiles(tiles)
        bar.update(len(tiles))
        return probs

    return predict


def load(run_dir: str | Path, device: str = "auto", **options) -> Predictor:
    """Load a trained run, or a folder written by `save_pretrained`, for prediction; keyword options set
    its `InferenceOptions`.

    >>> predictor = segwise.load("runs/cells", tta="flips")   # doctest: +SKIP
    >>> mask = predictor.predict("new.png")                    # H×W class indices (per-label task: C×H×W)
    >>> mask = predictor.predict("slide.tif", tile=1024)       # tiled at native resolution
    """
    model, config = load_model(run_dir)
    return Predictor(model, config, device, InferenceOptions(**options), run_dir)
