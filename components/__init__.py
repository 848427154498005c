"""longrl: components."""
