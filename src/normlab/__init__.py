"""normlab: batch statistics, moving averages and batch renormalization, compared by experiment."""

__version__ = "0.1.0"
