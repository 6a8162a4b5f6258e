"""Where do a model's attention heads look? Per-layer, per-head statistics on held-out windows.

The paper's third observation: middle layers of overlapping-k-mer models attend too narrowly (to
the few tokens that share bases with the query). For each layer and head, averaged over every real
query token of the windows:

- entropy: -sum_j p_ij log p_ij in nats (uniform over L keys: log L; all mass on one key: 0);
- top1: the largest weight max_j p_ij (1/L uniform, 1 for a head that looks at one key);
- overlap_share: the mass on keys within k - 1 tokens of the query (the tokens that spell some of
  its bases; 0 when k = 1), the query itself excluded.

Weights are recomputed from each layer's input with the layer's own query/key projections (the
model's SDPA kernels never materialise them), padding masked as in the forward pass.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

import torch

from megadna.model.bert import BertForMLM, sdpa_mask


@torch.no_grad()
def attention_probs(model: BertForMLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> Iterator[torch.Tensor]:
    """Layer by layer, the attention weights [B, heads, L, L] the forward pass uses (eval mode)."""
    model.eval()
    mask = sdpa_mask(attention_mask)
    x = model.bert.embeddings(input_ids)
    for layer in model.bert.encoder.layer:
        attn = layer.attention.self
        B, L, _ = x.shape
        q, k = (proj(x).view(B, L, attn.num_heads, -1).transpose(1, 2) for proj in (attn.query, attn.key))
        scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        yield scores.softmax(dim=-1)
        x = layer(x, mask)


@torch.no_grad()
def head_statistics(model: BertForMLM, input_ids: torch.Tensor, attention_mask: torch.Tensor | None, k: int,
                    batch_size: int = 8) -> dict[str, list[list[float]]]:
    """{"entropy", "top1", "overlap_share"}: each [layers][heads], means over real query tokens. Windows
    go through `batch_size` at a time and one layer's weights are held at once ([batch, heads, L, L])."""
    sums: dict[str, torch.Tensor] = {}
    n = 0.0
    idx = torch.arange(input_ids.shape[1])
    distance = (idx[:, None] - idx[None, :]).abs()
    near = ((distance >= 1) & (distance <= k - 1)).to(torch.float32)  # [L, L]: keys sharing bases with the query
    for i in range(0, input_ids.shape[0], batch_size):
        ids = input_ids[i : i + batch_size]
        mask = None if attention_mask is None else attention_mask[i : i + batch_size]
        real = torch.ones_like(ids, dtype=torch.bool) if mask is None else mask.bool()
        weight = real[:, None, :].float()  # [B, 1, L] queries that count
        n += float(weight.sum())
        for layer, p in enumerate(attention_probs(model, ids, mask)):  # [B, heads, L, L]
            values = {"entropy": -(p * p.clamp(min=1e-30).log()).sum(-1), "top1": p.max(dim=-1).values, "overlap_share": (p * near).sum(-1)}
            for name, value in values.items():
                total = (value * weight).sum(dim=(0, 2))  # [heads]
                key = f"{name}/{layer}"
                sums[key] = sums[key] + total if key in sums else total
    layers = 1 + max(int(key.split("/")[1]) for key in sums)
    return {name: [(sums[f"{name}/{i}"] / n).tolist() for i in range(layers)] for name in ("entropy", "top1", "overlap_share")}


def layer_means(stats: dict[str, list[list[float]]]) -> dict[str, list[float]]:
    """Each statistic averaged over the heads of a layer: [layers]."""
    return {name: [sum(heads) / len(heads) for heads in per_layer] for name, per_layer in stats.items()}


def plot_models(results: dict[str, dict], out: str | Path) -> None:
    """Per-layer head means of each statistic, one line per model, one panel per statistic."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = ("entropy", "top1", "overlap_share")
    labels = {"entropy": "attention entropy (nats)", "top1": "top-1 weight", "overlap_share": "mass on overlapping tokens"}
    fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.6))
    for ax, name in zip(axes, names):
        for model_name, r in results.items():
            means = layer_means(r["heads"])[name]
            ax.plot(range(1, len(means) + 1), means, "o-", label=model_name)
        ax.set(xlabel="layer", ylabel=labels[name])
        ax.set_xticks(range(1, 1 + max(len(r["heads"][name]) for r in results.values())))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
