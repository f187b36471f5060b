"""Slide-level multiple-instance learning models on bags of patch embeddings: gated ABMIL, CLAM-SB, TransMIL.

Every model takes a bag ``(N, D)`` or a batch of equal-size bags ``(B, N, D)`` and returns a dictionary with
``logits`` (B, C) and ``attention`` (B, N), the non-negative weight of each instance in the slide decision
(summing to 1 over the instances of each bag). CLAM-SB adds ``instance_loss`` when given the slide label in
training mode. Models are built by name with :func:`build_mil_model`.

Example:
    >>> model = build_mil_model("abmil", in_dim=128, n_classes=3)
    >>> out = model(torch.randn(500, 128))
    >>> out["logits"].shape, out["attention"].shape
    (torch.Size([1, 3]), torch.Size([1, 500]))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from sarcomakit.core.registry import Registry


def _as_batch(bag: torch.Tensor) -> torch.Tensor:
    if bag.ndim == 2:
        bag = bag[None]
    if bag.ndim != 3:
        raise ValueError(f"a bag must be (N, D) or (B, N, D), got shape {tuple(bag.shape)}")
    if bag.shape[1] == 0:
        raise ValueError("empty bag: a slide needs at least one instance")
    return bag


class GatedAttention(nn.Module):
    """Gated attention pooling scores (Ilse et al. 2018, eq. 9).

    ``a_k = w^T (tanh(V h_k) * sigmoid(U h_k))``; the attention weights are ``softmax_k(a_k)``.
    Returns the raw scores (B, N, n_heads).
    """

    def __init__(self, in_dim: int, hidden_dim: int, n_heads: int = 1, dropout: float = 0.0) -> None:
        super().__init__()
        self.tanh_branch = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Tanh(), nn.Dropout(dropout))
        self.sigmoid_branch = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.Sigmoid(), nn.Dropout(dropout))
        self.score = nn.Linear(hidden_dim, n_heads)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.score(self.tanh_branch(h) * self.sigmoid_branch(h))


class GatedABMIL(nn.Module):
    """Gated attention-based deep MIL (Ilse, Tomczak & Welling, ICML 2018).

    Instances are embedded by ``h_k = ReLU(W x_k)``, pooled as ``z = sum_k a_k h_k`` with gated attention
    weights ``a_k``, and classified by a linear layer on ``z``.

    Args:
        in_dim: width D of the patch embeddings.
        n_classes: number of slide classes C.
        hidden_dim: width of the instance embedding ``h``.
        attention_dim: width of the gated attention branches.
        dropout: dropout after the instance embedding and inside the attention branches.
    """

    def __init__(self, in_dim: int, n_classes: int, hidden_dim: int = 256, attention_dim: int = 128,
                 dropout: float = 0.25) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden_dim, attention_dim, 1, dropout)
        self.classifier = nn.Linear(hidden_dim, n_classes)

    def forward(self, bag: torch.Tensor, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.embed(_as_batch(bag))  # (B, N, H)
        scores = self.attention(h)[..., 0]  # (B, N)
        attention = torch.softmax(scores, dim=1)
        slide = torch.bmm(attention[:, None], h)[:, 0]  # (B, H)
        return {"logits": self.classifier(slide), "attention": attention, "attention_scores": scores,
                "embedding": slide}


def smooth_top1_svm_loss(logits: torch.Tensor, target: torch.Tensor, alpha: float = 1.0,
                         tau: float = 1.0) -> torch.Tensor:
    """Smooth top-1 multi-class SVM loss (Berrada et al. 2018), the instance loss of CLAM.

    With margins ``delta_j = alpha [j != y]``, the loss is
    ``tau * logsumexp_j((s_j + delta_j) / tau) - s_y``: a smooth version of ``max_j(s_j + delta_j) - s_y``.

    Args:
        logits: instance scores (M, K).
        target: instance pseudo labels (M,).
        alpha: the margin.
        tau: the smoothing temperature.
    """
    margins = alpha * (1.0 - F.one_hot(target, logits.shape[1]).to(logits.dtype))
    smooth_max = tau * torch.logsumexp((logits + margins) / tau, dim=1)
    return (smooth_max - logits.gather(1, target[:, None])[:, 0]).mean()


class CLAMSB(nn.Module):
    """CLAM single-branch (Lu et al., Nature Biomedical Engineering 2021).

    Gated attention pooling as ABMIL, plus one binary instance classifier per class. In training, for the
    slide's class ``y`` the ``k`` most and ``k`` least attended instances get pseudo labels 1 and 0 for the
    in-class classifier ``y``; for every other class ``c`` (the mutually exclusive, ``subtyping`` setting) the
    ``k`` most attended instances get pseudo label 0 for classifier ``c``. The instance loss is the smooth
    top-1 SVM loss averaged over classifiers; the training loss is
    ``bag_weight * CE(logits, y) + (1 - bag_weight) * instance_loss`` with ``bag_weight = 0.7``.

    Args:
        in_dim: width D of the patch embeddings.
        n_classes: number of slide classes C.
        hidden_dim: width of the instance embedding.
        attention_dim: width of the gated attention branches.
        k_sample: number of top and bottom instances per bag used for pseudo labels (capped at N // 2).
        dropout: dropout rate.
        subtyping: add the out-of-class terms (classes are mutually exclusive subtypes).
    """

    bag_weight = 0.7

    def __init__(self, in_dim: int, n_classes: int, hidden_dim: int = 256, attention_dim: int = 128,
                 k_sample: int = 8, dropout: float = 0.25, subtyping: bool = True) -> None:
        super().__init__()
        self.n_classes = n_classes
        self.k_sample = k_sample
        self.subtyping = subtyping
        self.embed = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(), nn.Dropout(dropout))
        self.attention = GatedAttention(hidden_dim, attention_dim, 1, dropout)
        self.classifier = nn.Linear(hidden_dim, n_classes)
        self.instance_classifiers = nn.ModuleList(nn.Linear(hidden_dim, 2) for _ in range(n_classes))

    def instance_loss(self, h: torch.Tensor, scores: torch.Tensor, label: int) -> torch.Tensor:
        """Instance clustering loss of one bag: ``h`` (N, H) embeddings, ``scores`` (N,) attention logits."""
        k = min(self.k_sample, h.shape[0] // 2)
        if k == 0:
            return h.sum() * 0.0
        top = torch.topk(scores, k).indices
        bottom = torch.topk(-scores, k).indices
        losses = []
        for c, head in enumerate(self.instance_classifiers):
            if c == label:
                idx = torch.cat([top, bottom])
                target = torch.cat([torch.ones(k), torch.zeros(k)]).long().to(h.device)
            elif self.subtyping:
                idx, target = top, torch.zeros(k, dtype=torch.long, device=h.device)
            else:
                continue
            losses.append(smooth_top1_svm_loss(head(h[idx]), target))
        return torch.stack(losses).mean()

    def forward(self, bag: torch.Tensor, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        h = self.embed(_as_batch(bag))
        scores = self.attention(h)[..., 0]
        attention = torch.softmax(scores, dim=1)
        slide = torch.bmm(attention[:, None], h)[:, 0]
        out = {"logits": self.classifier(slide), "attention": attention, "attention_scores": scores,
               "embedding": slide}
        if label is not None:
            labels = label.reshape(-1).tolist()
            out["instance_loss"] = torch.stack([self.instance_loss(h[b], scores[b], int(labels[b]))
                                                for b in range(h.shape[0])]).mean()
        return out


class PPEG(nn.Module):
    """TransMIL pyramid position encoding generator: depthwise convs (7, 5, 3) on square-reshaped tokens."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv7 = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.conv5 = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)
        self.conv3 = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, tokens: torch.Tensor, side: int) -> torch.Tensor:
        cls_token, feats = tokens[:, :1], tokens[:, 1:]
        b, n, d = feats.shape
        grid = feats.transpose(1, 2).reshape(b, d, side, side)
        grid = grid + self.conv7(grid) + self.conv5(grid) + self.conv3(grid)
        return torch.cat([cls_token, grid.flatten(2).transpose(1, 2)], dim=1)


class TransformerLayer(nn.Module):
    """Pre-norm multi-head self-attention with a residual; returns the tokens and head-averaged weights."""

    def __init__(self, dim: int, n_heads: int, dropout: float) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, n_heads, dropout=dropout, batch_first=True)

    def forward(self, tokens: torch.Tensor,
                pad_mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.norm(tokens)
        out, weights = self.attn(x, x, x, key_padding_mask=pad_mask, need_weights=True,
                                 average_attn_weights=True)
        return tokens + out, weights


class TransMIL(nn.Module):
    """TransMIL (Shao et al., NeurIPS 2021): a class token, two self-attention layers and PPEG between them.

    The instances are projected to ``dim``, the bag is padded to a square ``side x side`` by repeating its
    first instances (as in the paper), a class token is prepended, and the sequence passes
    attention layer -> PPEG -> attention layer -> LayerNorm; the class token is classified.

    Simplification (documented): the paper approximates self-attention with Nyström attention to scale to
    long bags; here exact multi-head attention (``torch.nn.MultiheadAttention``) is used, which gives the same
    model for the bag sizes of typical slides at 20x (O(N^2) memory). Padding copies are masked out as keys.

    ``attention`` is the class token's attention to each real instance in the last layer, averaged over heads
    and renormalised over the real instances (the class token's self-attention is excluded), so it sums to 1.

    Args:
        in_dim: width D of the patch embeddings.
        n_classes: number of slide classes.
        dim: token width.
        n_heads: attention heads.
        dropout: dropout rate.
    """

    def __init__(self, in_dim: int, n_classes: int, dim: int = 256, n_heads: int = 8,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(in_dim, dim), nn.ReLU())
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.layer1 = TransformerLayer(dim, n_heads, dropout)
        self.ppeg = PPEG(dim)
        self.layer2 = TransformerLayer(dim, n_heads, dropout)
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, n_classes)

    def forward(self, bag: torch.Tensor, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        x = self.project(_as_batch(bag))
        b, n, _ = x.shape
        side = math.ceil(math.sqrt(n))
        n_pad = side * side - n
        if n_pad:
            # Repeat instances cyclically (the paper repeats the first ones) to fill the square.
            idx = torch.arange(n_pad, device=x.device) % n
            x = torch.cat([x, x[:, idx]], dim=1)
        tokens = torch.cat([self.cls_token.expand(b, -1, -1), x], dim=1)
        pad_mask = torch.zeros(b, tokens.shape[1], dtype=torch.bool, device=x.device)
        pad_mask[:, 1 + n:] = True
        tokens, _ = self.layer1(tokens, pad_mask)
        tokens = self.ppeg(tokens, side)
        tokens, weights = self.layer2(tokens, pad_mask)
        slide = self.norm(tokens)[:, 0]
        to_instances = weights[:, 0, 1:1 + n]
        attention = to_instances / to_instances.sum(dim=1, keepdim=True).clamp_min(1e-12)
        return {"logits": self.classifier(slide), "attention": attention, "embedding": slide}


class StandardizedMIL(nn.Module):
    """A MIL model preceded by per-dimension standardisation of the instances, ``(x - mean) / std``.

    Patch embeddings (random-init or foreign encoders especially) can have tiny or uneven scales; the
    training instances' statistics are kept as buffers so that they travel with the checkpoint.
    """

    mean: torch.Tensor  # buffers (registered in __init__)
    std: torch.Tensor

    def __init__(self, model: nn.Module, mean: torch.Tensor, std: torch.Tensor) -> None:
        super().__init__()
        self.model = model
        self.register_buffer("mean", mean.detach().clone().float())
        self.register_buffer("std", std.detach().clone().float().clamp_min(1e-6))
        self.bag_weight = getattr(model, "bag_weight", 0.7)

    def forward(self, bag: torch.Tensor, label: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        return self.model((bag - self.mean) / self.std, label=label)


MILBuilder = Callable[..., nn.Module]
#: Slide-level (MIL) models by name (see :mod:`sarcomakit.core.registry` for the naming rules).
MIL_MODELS: Registry[MILBuilder] = Registry("MIL model", option="--model")
MIL_MODELS.add("abmil", GatedABMIL)
MIL_MODELS.add("clam_sb", CLAMSB)
MIL_MODELS.add("transmil", TransMIL)


def register_mil_model(name: str, builder: MILBuilder) -> None:
    """Add a model class or builder ``fn(in_dim, n_classes, **kw) -> nn.Module`` under ``name`` (a taken name raises
    ``ValueError``)."""
    MIL_MODELS.add(name, builder)


def available_mil_models() -> list[str]:
    """Names accepted by :func:`build_mil_model`."""
    return MIL_MODELS.names()


def build_mil_model(name: str, in_dim: int, n_classes: int, **kw: Any) -> nn.Module:
    """Build a registered MIL model (``abmil``, ``clam_sb``, ``transmil``) for ``in_dim``-wide features."""
    return MIL_MODELS.get(name)(in_dim=in_dim, n_classes=n_classes, **kw)


def mil_loss(model: nn.Module, out: dict[str, torch.Tensor], target: torch.Tensor,
             class_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Training loss of a MIL model: cross-entropy on the slide logits, mixed with CLAM's instance loss.

    For CLAM-SB, ``bag_weight * CE + (1 - bag_weight) * instance_loss``; for the others, CE alone.
    """
    bag_loss = F.cross_entropy(out["logits"], target, weight=class_weights)
    if "instance_loss" in out:
        weight = getattr(model, "bag_weight", 0.7)
        return weight * bag_loss + (1.0 - weight) * out["instance_loss"]
    return bag_loss
