"""Fingerprint, plans, splits, preprocessing and caches (see DESIGN.md, "Plans and splits")."""
