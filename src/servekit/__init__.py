"""servekit: serve TFLite models as fast, batched, observable HTTP services."""

__version__ = "0.1.0"
