"""Thin command-line entry points; all logic lives in the package's rooms."""
