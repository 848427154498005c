"""longrl: data_gen."""
