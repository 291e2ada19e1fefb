"""Base trainer, registry and the trainer family; built in later issues."""
