"""Data: the embedded shapes dataset; webdataset shards and pre-extracted codes live beside it."""

from .shapes import CLASS_NAMES, COLOUR_NAMES, NUM_CLASSES, ShapesDataset, describe, heldout

__all__ = ["CLASS_NAMES", "COLOUR_NAMES", "NUM_CLASSES", "ShapesDataset", "describe", "heldout"]
