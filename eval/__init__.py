"""longrl: eval."""
