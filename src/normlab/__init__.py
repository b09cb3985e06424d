"""normlab: batch normalization with batch statistics, moving averages and renormalization, compared by experiment."""

__version__ = "0.1.0"
