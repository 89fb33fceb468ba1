"""Built-in data sets that need no download: the talk's synthetic task, sklearn digits, mnist1d."""

from .datasets import DATASETS, Dataset, DatasetError, TensorLoader, UnknownDatasetError, list_datasets, load_dataset

__all__ = ["DATASETS", "Dataset", "DatasetError", "TensorLoader", "UnknownDatasetError", "list_datasets",
           "load_dataset"]
