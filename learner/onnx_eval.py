"""Score steps with an ONNX graph and an optional adapter, as the device would.

Why separate from the device runtime: evaluation needs no signatures or version rules, just
the same graph, the same adapter binding (``RunOptions.add_active_adapter``) and one thread.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort

from privacy.adapter_file import load_lora_adapter
from privacy.features import StepArrays
from privacy.graph_io import INPUT_APPS, INPUT_CONTEXT, INPUT_INSTRUCTION


def single_thread_session(onnx_bytes: bytes) -> ort.InferenceSession:
    """A CPU session on one thread, quiet about the (intended) overridable LoRA inputs."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(onnx_bytes, opts, providers=["CPUExecutionProvider"])


def onnx_scores(
    onnx_bytes: bytes | ort.InferenceSession, data: StepArrays, adapter: bytes | None = None
) -> np.ndarray:
    """Logits ``[N, len(data.apps)]`` for ``data`` (unmasked), with ``adapter`` active if
    given."""
    session = (
        onnx_bytes
        if isinstance(onnx_bytes, ort.InferenceSession)
        else single_thread_session(onnx_bytes)
    )
    run_options = ort.RunOptions()
    # Hold the adapter in a local: RunOptions may not keep it alive by itself.
    lora = load_lora_adapter(adapter) if adapter is not None else None
    if lora is not None:
        run_options.add_active_adapter(lora)
    feeds = {
        INPUT_INSTRUCTION: data.instruction,
        INPUT_CONTEXT: data.context,
        INPUT_APPS: data.app_features(),
    }
    return session.run(None, feeds, run_options)[0]


def onnx_hit_at_k(
    onnx_bytes: bytes | ort.InferenceSession,
    data: StepArrays,
    adapter: bytes | None = None,
    k: int = 1,
) -> float:
    """hit@k on the preference rows of ``data``, each among its available apps."""
    return data.hits(onnx_scores(onnx_bytes, data, adapter), k)
