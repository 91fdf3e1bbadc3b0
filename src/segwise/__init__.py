"""segwise: semantic image segmentation from a folder of images and masks to a trained, evaluated model.

>>> import segwise
>>> result = segwise.train("data/cells", epochs=20)         # doctest: +SKIP
>>> mask = segwise.load(result.run_dir).predict("new.png")   # doctest: +SKIP
"""

from .engine import train
from .errors import SegwiseError
from .inference import Predictor, load
from .models import create_model, list_models

__version__ = "0.1.0"
__all__ = ["Predictor", "SegwiseError", "__version__", "create_model", "list_models", "load", "train"]
