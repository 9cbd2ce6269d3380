"""Names of the personalization graph's inputs and outputs: the export/runtime contract.

Why a module of its own: the learner (which exports with torch) and the device (which must
not import torch) both need these names, and ORT binds adapter parameters purely by name.
"""

from __future__ import annotations

INPUT_INSTRUCTION = "instruction"  # float32 [batch, 128]: embed_instruction(text)
INPUT_CONTEXT = "context"  # float32 [batch, 128]: the device's context embedding
LORA_A = "lora_A"  # float32 [hidden, rank], overridable (zero initializer)
LORA_B = "lora_B"  # float32 [rank, num_candidates], overridable (zero initializer)
OUTPUT_LOGITS = "logits"  # float32 [batch, num_candidates], in catalogue order
