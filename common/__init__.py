"""Small shared pieces every longrl package may use: typed configs, run folders, secrets hygiene.

Nothing here imports torch, transformers or any stage package, so importing it is cheap.
"""
