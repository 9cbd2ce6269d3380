"""The on-device personalization model: two towers, instruction + context against candidate apps.

Shape of the model and why::

    x       = concat(embed_instruction(text) [128], context [128])       # both unit-norm
    h       = relu(W1 x + b1)                                            # [hidden]
    q       = W2 h + b2  +  scale * (h @ lora_A) @ lora_B                # [query]   context tower
    v_a     = Wv f_a + bv                                                # [query]   app tower
    logit_a = q . v_a  +  wp . f_a  +  affinity * (context . f_a)        # per candidate app a

``f_a`` is app ``a``'s identity vector (:func:`privacy.embedding.embed_app`: hashed n-grams
of its canonical name and aliases, plus its intent tags), fed in as the graph input ``apps``
``[num_apps, 128]``. The model is therefore *open*: it scores whatever apps the device passes,
in any number, including apps it never saw in training (by their names and tags). The
instruction carries the intent, the context (one event per recent task, each holding the
identity vector of the app the user ended up using) carries the user's habits; the
``affinity`` term reads that overlap directly, so an app used a moment ago for a task is found
again even by the base model.

Personalization is a rank-``r`` LoRA on the context tower's last layer (``W2``): small (a few
KB, independent of the number of apps), cheap to fit privately, and unable to damage the
shared trunk or the app tower, which the base model fixes.

In the exported ONNX graph ``lora_A`` and ``lora_B`` are graph *inputs* that also have zero
initializers. ORT treats such inputs as overridable: with no adapter the zeros apply (the base
model), and ``RunOptions.add_active_adapter`` feeds an adapter's parameters of the same names.
The base model's identity is the SHA-256 of its ONNX bytes; every adapter manifest names it.

Base weights are trained here, deterministically, on population-level data the composition root
passes in (``deploy.simulation.base_model`` builds it from the simulator), nothing downloaded.
The net also keeps the *reference Gram* ``E[h h^T]`` of its trunk features on that training data
(a buffer, saved with the weights): the private learner's Newton step needs it, and keeping it
in the model means no service has to see the training data again. Bit-identical output is only
promised for one platform and torch version; adapters bind to the *hash* of the shipped bytes.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from privacy.adapter_file import LoRAWeights
from privacy.contribution import HIDDEN, QUERY_DIM
from privacy.features import StepArrays
from privacy.graph_io import (
    INPUT_APPS,
    INPUT_CONTEXT,
    INPUT_INSTRUCTION,
    LORA_A,
    LORA_B,
    OUTPUT_LOGITS,
)
from privacy.wire import EMBEDDING_DIM

ONNX_OPSET = 17
BASE_SEED = 20250106
MODEL_FORMAT = 2  # 2: two towers, apps as a graph input (1 was the closed 45-way output)
SCALE_METADATA = "sotto.lora_scale"  # the ONNX metadata key that carries the LoRA scale
_MASKED = -1e4  # logit of an app a row cannot suggest, during training


@dataclass(frozen=True)
class ModelConfig:
    """Sizes of the model. ``scale = alpha / rank`` is baked into the graph."""

    embed_dim: int = EMBEDDING_DIM
    hidden: int = HIDDEN
    query_dim: int = QUERY_DIM
    rank: int = 4
    alpha: float = 8.0

    @property
    def scale(self) -> float:
        return self.alpha / self.rank

    def zero_lora(self) -> LoRAWeights:
        return LoRAWeights.zeros(self.hidden, self.rank, self.query_dim)


class PersonalizationNet(nn.Module):
    """The two towers and the LoRA term; LoRA tensors are call arguments so the same function
    exports with them as graph inputs."""

    def __init__(self, config: ModelConfig = ModelConfig()) -> None:
        super().__init__()
        self.config = config
        self.hidden = nn.Linear(2 * config.embed_dim, config.hidden)
        self.query = nn.Linear(config.hidden, config.query_dim)
        self.app = nn.Linear(config.embed_dim, config.query_dim)
        self.app_prior = nn.Parameter(torch.zeros(config.embed_dim))
        self.affinity = nn.Parameter(torch.tensor(1.0))
        self.register_buffer("gram", torch.zeros(config.hidden, config.hidden, dtype=torch.float64))
        self.register_buffer(
            "app_gram", torch.zeros(config.query_dim, config.query_dim, dtype=torch.float64)
        )

    def set_reference_gram(self, data: StepArrays) -> None:
        """Store the two curvature factors of the base's loss in a query-layer delta, read on
        ``data`` (the base's training data): ``E[h h^T]`` of the trunk features, and the app
        side ``E[V^T (diag p - p p^T) V]`` (``V`` the available apps' vectors, ``p`` the base's
        probabilities). The private learner's Newton step is their Kronecker product."""
        with torch.no_grad():
            x_i, x_c = torch.from_numpy(data.instruction), torch.from_numpy(data.context)
            h = self.features(x_i, x_c)
            apps = torch.from_numpy(data.app_features())
            zero = self.config.zero_lora()
            logits = self(x_i, x_c, apps, torch.from_numpy(zero.A), torch.from_numpy(zero.B))
            avail = torch.from_numpy(data.available)
            p = torch.softmax(logits.masked_fill(~avail, _MASKED), dim=-1).double()
            v = self.app_vectors(apps).double()
        h64 = h.double()
        n = max(1, len(h64))
        self.gram.copy_(h64.T @ h64 / n)
        pv = p @ v  # [N, query]: E_p[v] per row
        second = (v.T * p.sum(0)) @ v  # sum_rows V^T diag(p) V
        self.app_gram.copy_((second - pv.T @ pv) / n)

    def features(self, instruction: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """The hidden activations ``h`` the LoRA term reads."""
        return torch.relu(self.hidden(torch.cat([instruction, context], dim=-1)))

    def app_vectors(self, apps: torch.Tensor) -> torch.Tensor:
        """``v_a`` for every row of ``apps`` (identity features)."""
        return self.app(apps)

    def forward(
        self,
        instruction: torch.Tensor,
        context: torch.Tensor,
        apps: torch.Tensor,
        lora_A: torch.Tensor,
        lora_B: torch.Tensor,
    ) -> torch.Tensor:
        h = self.features(instruction, context)
        q = self.query(h) + torch.matmul(torch.matmul(h, lora_A), lora_B) * self.config.scale
        v = self.app_vectors(apps)
        prior = torch.matmul(apps, self.app_prior)
        return torch.matmul(q, v.T) + prior + self.affinity * torch.matmul(context, apps.T)

    def logits(self, data: StepArrays, lora: LoRAWeights | None = None) -> np.ndarray:
        """Scores ``[N, len(data.apps)]`` for every row of ``data`` (no gradient, unmasked),
        with ``lora`` or the base."""
        lora = lora or self.config.zero_lora()
        with torch.no_grad():
            out = self(
                torch.from_numpy(data.instruction),
                torch.from_numpy(data.context),
                torch.from_numpy(data.app_features()),
                torch.from_numpy(lora.A),
                torch.from_numpy(lora.B),
            )
        return out.numpy()


def row_loss(
    logits: torch.Tensor, labels: torch.Tensor, polarity: torch.Tensor, available: torch.Tensor
) -> torch.Tensor:
    """Mean loss over rows: cross-entropy over the available apps for a used app,
    ``-log(1 - p)`` for an app that failed to launch (a failure, not a preference), and the
    cross-entropy to the uniform over the available apps for a task that needed no app."""
    z = logits.masked_fill(~available, _MASKED)
    logp = torch.log_softmax(z, dim=-1)
    picked = logp.gather(1, labels[:, None]).squeeze(1)
    pos = -picked
    neg = -torch.log1p(-picked.exp().clamp(max=1 - 1e-6))
    avail = available.to(logp.dtype)
    flat = -(logp.masked_fill(~available, 0.0) * avail).sum(-1) / avail.sum(-1).clamp(min=1)
    return torch.where(polarity > 0, pos, torch.where(polarity < 0, neg, flat)).mean()


def train_base(
    data: StepArrays,
    config: ModelConfig = ModelConfig(),
    seed: int = BASE_SEED,
    epochs: int = 10,
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
    apps = torch.from_numpy(data.app_features())
    y = torch.from_numpy(data.labels)
    pol = torch.from_numpy(data.polarity)
    avail = torch.from_numpy(data.available)
    zero = config.zero_lora()
    a0, b0 = torch.from_numpy(zero.A), torch.from_numpy(zero.B)
    opt = torch.optim.Adam(net.parameters(), lr=lr, weight_decay=weight_decay)
    net.train()
    for _ in range(epochs):
        order = torch.randperm(len(y), generator=gen)
        for start in range(0, len(y), batch_size):
            idx = order[start : start + batch_size]
            opt.zero_grad()
            logits = net(x_i[idx], x_c[idx], apps, a0, b0)
            row_loss(logits, y[idx], pol[idx], avail[idx]).backward()
            opt.step()
    net.eval()
    net.set_reference_gram(data)
    return net


def export_onnx(net: PersonalizationNet, lora_defaults: bool = True) -> bytes:
    """The ONNX bytes of ``net`` with ``lora_A``/``lora_B`` as graph inputs.

    With ``lora_defaults`` (what ships) they also get zero initializers, making them optional
    and overridable by an active adapter. Without, they are plain required inputs — the form
    to hand to graph rewriters such as quantization, which would otherwise treat the zero
    initializers as weights and fold them away. The LoRA scale travels as the metadata entry
    :data:`SCALE_METADATA`.
    """
    cfg = net.config
    zero = cfg.zero_lora()
    args = (
        torch.zeros(1, cfg.embed_dim),
        torch.zeros(1, cfg.embed_dim),
        torch.zeros(2, cfg.embed_dim),
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
            input_names=[INPUT_INSTRUCTION, INPUT_CONTEXT, INPUT_APPS, LORA_A, LORA_B],
            output_names=[OUTPUT_LOGITS],
            dynamic_axes={
                INPUT_INSTRUCTION: {0: "batch"},
                INPUT_CONTEXT: {0: "batch"},
                INPUT_APPS: {0: "apps"},
                OUTPUT_LOGITS: {0: "batch", 1: "apps"},
            },
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
        )
    model = onnx.load_from_string(buf.getvalue())
    helper.set_model_props(model, {SCALE_METADATA: repr(float(cfg.scale))})
    raw = model.SerializeToString()
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
