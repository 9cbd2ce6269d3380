"""Names of the personalization graph's inputs and outputs: the export/runtime contract.

Why a module of its own: the learner (which exports with torch) and the device (which must
not import torch) both need these names, and ORT binds adapter parameters purely by name.

The graph is two towers: the context tower reads ``instruction`` and ``context`` and makes a
query vector (the LoRA adapter sits on its last layer); the app tower reads ``apps``, one row
of identity features per candidate app (:func:`privacy.features.app_features`), and is fixed
by the base model. ``logits[b, a]`` scores candidate ``a`` for row ``b``: any set of apps, in
any order, of any size.
"""

from __future__ import annotations

INPUT_INSTRUCTION = "instruction"  # float32 [batch, 128]: embed_instruction(text)
INPUT_CONTEXT = "context"  # float32 [batch, 128]: the device's context embedding
INPUT_APPS = "apps"  # float32 [num_apps, 128]: embed_app(name) per candidate
LORA_A = "lora_A"  # float32 [hidden, rank], overridable (zero initializer)
LORA_B = "lora_B"  # float32 [rank, query_dim], overridable (zero initializer)
OUTPUT_LOGITS = "logits"  # float32 [batch, num_apps], in the order of INPUT_APPS
