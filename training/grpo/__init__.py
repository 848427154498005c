"""GRPO for long video (MR-SP stage 1): algorithm math, rewards, the single-controller trainer."""
