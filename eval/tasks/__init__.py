"""Benchmark definitions: importing this package registers every task (one module per family)."""

from eval.tasks import (  # noqa: F401
    activitynetqa,
    longrl_data,
    longvideobench,
    mlvu,
    nextqa,
    perceptiontest,
    text,
    videomme,
    vnbench,
)
