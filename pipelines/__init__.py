"""longrl: pipelines."""
