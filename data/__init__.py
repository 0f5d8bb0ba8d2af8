"""Framework-free dataset layer: samples, readers, split, synthetic data (no TensorFlow, no torch)."""
from .dataset import Dataset, Entry, in_memory
from .errors import DatasetError
from .readers import available_formats, detect_format, read_dataset
from .sample import Sample
from .split import load_or_make_split, make_split, read_split, write_split

__all__ = [
    "Dataset",
    "DatasetError",
    "Entry",
    "Sample",
    "available_formats",
    "detect_format",
    "in_memory",
    "load_or_make_split",
    "make_split",
    "read_dataset",
    "read_split",
    "write_split",
]
