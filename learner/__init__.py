"""Incremental learners: sliding-window LoRA fine-tuning, shadow gate, registry, shipping."""
