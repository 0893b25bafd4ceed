"""Datasets for the optimizee tasks, read from a local folder (see :mod:`l2l_lightning.data.datasets`)."""

from l2l_lightning.data.datasets import DatasetName, LabeledImages, Split, load_images

__all__ = ["DatasetName", "LabeledImages", "Split", "load_images"]
