"""Data source components: each builds a :class:`dgraph.runtime.data.DataSource`."""

from dgraph.components.data.digits import Digits
from dgraph.components.data.tensor_file import TensorFile
from dgraph.components.data.text import JsonlPairs, TextLM
from dgraph.components.data.topk_cache import LMTopKCache
from dgraph.components.data.toy2d import Toy2D

__all__ = ["Digits", "JsonlPairs", "LMTopKCache", "TensorFile", "TextLM", "Toy2D"]
