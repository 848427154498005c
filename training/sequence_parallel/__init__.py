"""MR-SP stage 2: Ulysses sequence parallelism for Qwen2.5-VL, frame-split vision encoding, and a
data-parallel x sequence-parallel device mesh with FSDP2. See docs/sequence_parallel.md.

Modules: layout (sequence/head plans), comm (autograd all-to-all and gathers), attention (the
registered Ulysses attention), logprobs (chunked fused log-probs), vision (frame split), policy
(LogProbModel), mesh (DeviceMesh + FSDP2), local_group (multi-process runner for tests/bench).
"""
