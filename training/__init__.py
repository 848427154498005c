"""longrl: training."""
