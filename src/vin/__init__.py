"""vin: long video generation with Video Interface Networks (arXiv 2503.17539)."""

__version__ = "0.1.0"
