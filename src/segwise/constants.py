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
    postprocess.json   per-class post-processing chosen on data by `segwise tune-postprocess` (inference/tuned.py);
                       predict and eval apply it. A folds parent (`folds.json` beside fold_0/ …) holds it for the ensemble
    eval/SPLIT/        `segwise eval`: metrics.json, per_image.csv, confusion.png, iou_per_class.png, worst.png
    calibration.json   the temperature its probabilities are shown with (calibration.py): fitted at the
                       end of training, refitted by `segwise eval --calibrate`
    eval/SPLIT/        `segwise eval`: metrics.json, per_image.csv, confusion.png, iou_per_class.png, worst.png,
                       reliability.png
    report.html        `segwise report`

A folder written by `save_pretrained` (pretrained.py) holds config.json, model.safetensors, README.md and
threshold.json when the run has one.

A folds parent, `runs/<name>/` of `segwise train DATA --folds K` (crossval.py), holds folds.json,
plan.yaml, fold_0/ … fold_{K-1}/ (ordinary run folders, each with oof/: its out-of-fold predictions)
and cv_summary.json / cv_summary.csv.
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
POSTPROCESS_JSON = "postprocess.json"
FOLDS_JSON = "folds.json"  # a folds parent's record of its folds (cross-validation); fold_0/ … are runs
CALIBRATION_JSON = "calibration.json"
HELD_OUT = "val.txt"  # image paths relative to the data folder, one a line
DATA_RECORD = "data.json"
REPORT = "report.html"
PRETRAINED_CONFIG = "config.json"  # save_pretrained's config, beside WEIGHTS, in the hubs' layout
MODEL_CARD = "README.md"

EVAL_DIR = "eval"
METRICS_JSON = "metrics.json"
PER_IMAGE_CSV = "per_image.csv"
CONFUSION_PNG = "confusion.png"
IOU_PNG = "iou_per_class.png"
WORST_PNG = "worst.png"
RELIABILITY_PNG = "reliability.png"

FOLDS = "folds.json"  # K, seed, the data folder, each fold's images relative to it
FOLDS_PLAN = "plan.yaml"  # the plan every fold trains with
OUT_OF_FOLD = "oof"  # in a fold's run folder: index.csv, one .npz per held-out image, metrics.json
OUT_OF_FOLD_INDEX = "index.csv"
CV_SUMMARY_JSON = "cv_summary.json"
CV_SUMMARY_CSV = "cv_summary.csv"

# The most pixels an image may have for segwise to read it (io.max_pixels); the environment variable,
# set by the commands' --max-pixels, raises or lowers it.
MAX_PIXELS_ENV = "SEGWISE_MAX_PIXELS"
DEFAULT_MAX_PIXELS = 16384 * 16384
