"""Names shared across layers: the ignore index and the files of a run folder.

This module imports nothing, so any module of the package may import it without creating a cycle.

A run folder, `runs/<name>/`, holds:

    config.yaml        everything to rebuild the model and its preprocessing (config.RunConfig)
    model.safetensors  best weights by the monitored metric (the EMA weights when EMA is on)
    last.pt            full training state after the last epoch (engine/checkpoint.py; weights_only=True)
    metrics.csv        one row per epoch
    curves.png         loss and mIoU per epoch
    lr.png             learning rate per epoch
    tensorboard/       only with --tensorboard
    val_samples/       image | truth | prediction panels
    val.txt            the images a run held out for validation when the data had no val/ split
    data.json          the data it trains on: pairs per split, files' sizes and times (data/fingerprint.py)
    threshold.json     a binary run's foreground threshold, from `segwise eval --save-threshold`
    calibration.json   the temperature its probabilities are shown with (calibration.py): fitted at the
                       end of training, refitted by `segwise eval --calibrate`
    eval/SPLIT/        `segwise eval`: metrics.json, per_image.csv, confusion.png, iou_per_class.png, worst.png,
                       reliability.png
    report.html        `segwise report`
"""

IGNORE_INDEX = 255  # mask value that counts for nothing (void): in losses, metrics and augmentation padding

CONFIG = "config.yaml"
WEIGHTS = "model.safetensors"
LAST = "last.pt"
METRICS = "metrics.csv"
CURVES = "curves.png"
LR_PLOT = "lr.png"
TENSORBOARD = "tensorboard"
SAMPLES = "val_samples"
THRESHOLD_JSON = "threshold.json"
CALIBRATION_JSON = "calibration.json"
HELD_OUT = "val.txt"  # image paths relative to the data folder, one a line
DATA_RECORD = "data.json"
REPORT = "report.html"

EVAL_DIR = "eval"
METRICS_JSON = "metrics.json"
PER_IMAGE_CSV = "per_image.csv"
CONFUSION_PNG = "confusion.png"
IOU_PNG = "iou_per_class.png"
WORST_PNG = "worst.png"
RELIABILITY_PNG = "reliability.png"

# The most pixels an image may have for segwise to read it (io.max_pixels); the environment variable,
# set by the commands' --max-pixels, raises or lowers it.
MAX_PIXELS_ENV = "SEGWISE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 16384 * 16384
