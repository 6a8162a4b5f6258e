"""megadna: BERT-like pre-training for DNA foundation models on DeepSpeed, judged on GUE."""

__version__ = "0.1.0"
