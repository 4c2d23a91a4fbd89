"""unigap: measure and close the understanding-generation gap of unified multimodal models."""

__version__ = "0.1.0"
