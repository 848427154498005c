"""MR-SP stage 2: Ulysses sequence parallelism for Qwen2.5-VL, frame-split vision encoding, a
data-parallel x sequence-parallel device mesh with FSDP2, and GRPO on it. See
docs/sequence_parallel.md.

Modules: layout (sequence/head plans), comm (autograd all-to-all and gathers), attention (the
registered Ulysses attention), vision (frame split), policy
(LogProbModel), mesh (DeviceMesh + FSDP2), step_split (a GRPO step's work over ranks),
grpo_trainer (ParallelGRPOTrainer), run (Ray Train / torchrun entry points), vllm_colocate
(colocated vLLM rollout, GPU only), local_group (multi-process runner for tests/bench).
"""
