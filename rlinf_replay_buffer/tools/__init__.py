"""Tools that reshape buffer directories (merge, split)."""

from .merge_split import MergeSplitResult, merge_or_split

__all__ = ["MergeSplitResult", "merge_or_split"]
