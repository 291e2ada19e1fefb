"""Converters from source layouts to sampref's raw format, the dataset.json writer and verification."""
