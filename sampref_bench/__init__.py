"""sampref: self-configuring benchmarks for fine-tuning SAM on medical images with scarce annotation."""

__version__ = "0.1.0"
