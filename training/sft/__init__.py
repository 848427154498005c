"""CoT-SFT: supervised fine-tuning of a Qwen2.5-VL-family model on LongVideo-Reason records
(`<think>reasoning</think><answer>answer</answer>` targets). See docs/sft.md.

Modules: config (SFTConfig), data (records -> scanned, length-known examples; bad-data report),
batching (length-grouped global batches split over ranks and micro-batches), step (loss of one
micro-batch), metrics (console/jsonl/MLflow, loss curve), evaluate (held-out loss, greedy
format/accuracy), trainer (the loop), launch (one process or Ray Train workers).
"""
