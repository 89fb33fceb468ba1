"""Built-in data sets that need no download: the talk's synthetic task, sklearn digits, mnist1d."""

from .datasets import DATASETS, Dataset, TensorLoader, UnknownDatasetError, list_datasets, load_dataset

__all__ = ["DATASETS", "Dataset", "TensorLoader", "UnknownDatasetError", "list_datasets", "load_dataset"]
