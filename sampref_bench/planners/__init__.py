"""Fingerprint, plans, splits, preprocessing and the image-embedding cache."""
