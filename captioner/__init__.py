"""captioner: image -> CNN vector v -> RNN decoder -> captions. No Flask, no datasets in here."""

from .checkpoint import CheckpointError
from .model import Caption, Captioner, default_model_path, load
from .preprocess import ImageError, ImageTooLarge, PreprocessConfig
from .vocab import Vocabulary, tokenize

__version__ = "0.1.0"
__all__ = ["Caption", "Captioner", "CheckpointError", "ImageError", "ImageTooLarge", "PreprocessConfig", "Vocabulary",
           "default_model_path", "load", "tokenize", "__version__"]
