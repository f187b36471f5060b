"""sarcomakit: deep learning for soft-tissue sarcoma imaging."""
__version__ = "0.1.0"
