"""tuneline core: the zenml-free logic behind the pipeline steps.

Everything under this package imports without zenml so the training core also
runs standalone (benchmarks, a bare GPU box, unit tests).
"""

__version__ = "0.1.0"
