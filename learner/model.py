"""The on-device personalization model: instruction + context -> a score per catalogue candidate.

Shape of the model and why::

    x      = concat(embed_instruction(text) [128], context [128])      # both unit-norm
    h      = relu(W1 x + b1)                                           # [hidden]
    logits = W2 h + b2  +  scale * (h @ lora_A) @ lora_B               # [num_candidates]

The instruction carries the *intent* (navigate, pay...), the context embedding carries the
user's recent behaviour (which apps they opened), and the base learns how the two combine for
the whole population. Personalization is a rank-``r`` LoRA on the final layer only: it is
small enough to ship often (a few KB), cheap to fit with a private learner, and it cannot
damage the shared hidden features.

In the exported ONNX graph ``lora_A`` and ``lora_B`` are graph *inputs* that also have zero
initializers. ORT treats such inputs as overridable: with no adapter the zeros apply (the base
model), and ``RunOptions.add_active_adapter`` feeds an adapter's parameters of the same names.
The base model's identity is the SHA-256 of its ONNX bytes; every adapter manifest names it.

Base weights are trained here, deterministically, on population-level data the composition root
passes in (``deploy.simulation.base_model`` builds it from the simulator), nothing downloaded.
The net also keeps the *reference Gram* ``E[h h^T]`` of its trunk features on that training data
(a buffer, saved with the weights): the private learner's Newton step needs it, and keeping it
in the model means no service has to see the training data again. Bit-identical output is only promised for one
platform and torch version; adapters bind to the *hash* of the shipped bytes, not to the seed.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from privacy.adapter_file import LoRAWeights
from privacy.catalog import NUM_CANDIDATES
from privacy.features import StepArrays
from privacy.graph_io import INPUT_CONTEXT, INPUT_INSTRUCTION, LORA_A, LORA_B, OUTPUT_LOGITS
from privacy.wire import EMBEDDING_DIM

ONNX_OPSET = 17
BASE_SEED = 20250106


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the model. ``scale = alpha / rank`` is baked into the graph."""

    embed_dim: int = EMBEDDING_DIM
    hidden: int = 64
    rank: int = 4
    alpha: float = 8.0
    num_candidates: int = NUM_CANDIDATES

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def zero_lora(self) -> LoRAWeights:
        return LoRAWeights.zeros(self.hidden, self.rank, self.num_candidates)


class PersonalizationNet(nn.Module):
    """Two linear layers and a LoRA term on the second; LoRA tensors are call arguments so
    the same function exports with them as graph inputs."""

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        self.hidden = nn.Linear(2 * config.embed_dim, config.hidden)
        self.out = nn.Linear(config.hidden, config.num_candidates)
        self.register_buffer("gram", torch.zeros(config.hidden, config.hidden, dtype=torch.float64))

    def set_reference_gram(self, data: StepArrays) -> None:
        """Store ``E[h h^T]`` of the trunk features on ``data`` (the base's training data)."""
        with torch.no_grad():
            h = self.features(torch.from_numpy(data.instruction), torch.from_numpy(data.context))
        h64 = h.double()
        self.gram.copy_(h64.T @ h64 / max(1, len(h64)))

    def features(self, instruction: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The hidden activations ``h`` the LoRA term reads."""
        return torch.relu(self.hidden(torch.cat([instruction, context], dim=-1)))

    def forward(
        self,
        instruction: torch.Tensor,
        context: torch.Tensor,
        lora_A: torch.Tensor,
        lora_B: torch.Tensor,
    ) -> torch.Tensor:
        h = self.features(instruction, context)
        return self.out(h) + torch.matmul(torch.matmul(h, lora_A), lora_B) * self.config.scale

    def logits(self, data: StepArrays, lora: LoRAWeights | None = None) -> np.ndarray:
        """Scores for every row of ``data`` (no gradient), with ``lora`` or the base."""
        lora = lora or self.config.zero_lora()
        with torch.no_grad():
            out = self(
                torch.from_numpy(data.instruction),
                torch.from_numpy(data.context),
                torch.from_numpy(lora.A),
                torch.from_numpy(lora.B),
            )
        return out.numpy()


def train_base(
    data: StepArrays,
    config: ModelConfig = ModelConfig(),
    seed: int = BASE_SEED,
    epochs: int = 40,
    batch_size: int = 128,
    lr: float = 5e-3,
    weight_decay: float = 1e-4,
) -> PersonalizationNet:
    """Seeded minibatch training of the base weights (LoRA held at zero)."""
    torch.manual_seed(seed)
    net = PersonalizationNet(config)
    gen = torch.Generator().manual_seed(seed)
    x_i = torch.from_numpy(data.instruction)
    x_c = torch.from_numpy(data.context)
    y = torch.from_numpy(data.labels)
    zero = config.zero_lora()
    a0, b0 = torch.from_numpy(zero.A), torch.from_numpy(zero.B)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    loss_fn = nn.CrossEntropyLoss()
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            loss = loss_fn(net(x_i[idx], x_c[idx], a0, b0), y[idx])
            loss.backward()
            opt.step()
    net.eval()
    net.set_reference_gram(data)
    return net


def export_onnx(net: PersonalizationNet, lora_defaults: bool = True) -> bytes:
    """The ONNX bytes of ``net`` with ``lora_A``/``lora_B`` as graph inputs.

    With ``lora_defaults`` (what ships) they also get zero initializers, making them optional
    and overridable by an active adapter. Without, they are plain required inputs — the form
    to hand to graph rewriters such as quantization, which would otherwise treat the zero
    initializers as weights and fold them away.
    """
    cfg = net.config
    zero = cfg.zero_lora()
    args = (
        torch.zeros(1, cfg.embed_dim),
        torch.zeros(1, cfg.embed_dim),
        torch.from_numpy(zero.A),
        torch.from_numpy(zero.B),
    )
    buf = io.BytesIO()
    net.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            net,
            args,
            buf,
            dynamo=False,
            input_names=[INPUT_INSTRUCTION, INPUT_CONTEXT, LORA_A, LORA_B],
            output_names=[OUTPUT_LOGITS],
            dynamic_axes={
                INPUT_INSTRUCTION: {0: "batch"},
                INPUT_CONTEXT: {0: "batch"},
                OUTPUT_LOGITS: {0: "batch"},
            },
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )
    raw = buf.getvalue()
    return add_lora_defaults(raw, cfg) if lora_defaults else raw


def add_lora_defaults(onnx_bytes: bytes, config: ModelConfig) -> bytes:
    """Give the LoRA inputs zero initializers so the graph runs without an adapter."""
    model = onnx.load_from_string(onnx_bytes)
    present = {init.name for init in model.graph.initializer}
    zero = config.zero_lora()
    for name, arr in zero.as_feeds().items():
        if name not in present:
            model.graph.initializer.append(numpy_helper.from_array(arr, name))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def model_sha256(onnx_bytes: bytes) -> str:
    """The base model's identity, as adapters and manifests name it."""
    return hashlib.sha256(onnx_bytes).hexdigest()
