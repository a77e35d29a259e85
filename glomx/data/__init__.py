"""Data layer: catalogue, image decoding, split, on-disk array store, synthetic data."""
