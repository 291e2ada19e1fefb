"""Unsupervised prompt sources (saliency boxes, VQA and LLM text) and text encoders; built in later issues."""
