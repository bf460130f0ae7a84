"""spectui: see what fine-tuning did to a model's weights, one singular vector at a time."""

__version__ = "0.1.0"
