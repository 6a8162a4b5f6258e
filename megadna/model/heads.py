"""Task heads on megadna's BERT encoder. `BertClassifier`: sequence classification, as Hugging Face's
BertForSequenceClassification (the class DNABERT-2 was fine-tuned through, so comparisons stay like
for like)."""

from __future__ import annotations

import torch
import torch.nn as nn

from megadna.errors import InputError
from megadna.model.bert import Bert, ModelConfig

POOLINGS = ("cls", "mean")  # what a head or a probe reads from the encoder's output


def pool(h: torch.Tensor, mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """[B, L, H] hidden states -> [B, H] fp32: [CLS]'s, or the mean over the tokens where mask is 1
    (every token when mask is None)."""
    h = h.float()
    if pooling == "cls":
        return h[:, 0]
    if mask is None:
        return h.mean(1)
    m = mask.to(h.dtype).unsqueeze(-1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1.0)


def check_layer(bert: Bert, layer: int, flag: str = "--layer") -> int:
    """The index into the num_layers + 1 hidden states (0 = the embedding output) that `layer` names
    (negative: from the top); a layer the model lacks is an InputError naming `flag`."""
    n = len(bert.encoder.layer)
    if not -(n + 1) <= layer <= n:
        raise InputError(f"{flag} {layer}: the model has {n} layers; use 0 (embeddings) to {n}, or -1 (the last) to -{n + 1}")
    return layer % (n + 1)


class BertClassifier(nn.Module):
    """megadna's BERT encoder + HF BertForSequenceClassification's head.

    pooler: dense + tanh on the [CLS] hidden state (HF's BertPooler), then dropout (the encoder's
    hidden dropout, as HF's classifier_dropout=None) and a linear layer to num_labels logits. The
    pooler is new (pre-training has no next-sentence task), so it starts from random init, as in HF.
    pooling="mean" feeds the pooler the mean over the sequence's tokens instead of [CLS]: MLM
    pre-training never trains [CLS], and a pre-trained model's [CLS] can end up attending to itself
    alone, carrying nothing of the sequence (docs/PAPER.md measures it).
    """

    def __init__(self, bert: Bert, config: ModelConfig, num_labels: int, pooling: str = "cls"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.config = config
        self.pooling = pooling
        self.bert = bert
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        # The pooled vector is standardised before the pooler: (pooled - feature_mean) / feature_std.
        # Identity unless set from data (set_feature_stats).
        self.register_buffer("feature_mean", torch.zeros(config.hidden_size))
        self.register_buffer("feature_std", torch.ones(config.hidden_size))
        # Outputs are classifier(...) * output_scale + output_shift: identity, except for regression,
        # where they are the train labels' std and mean (set_output_stats), so the head answers in label units.
        self.register_buffer("output_scale", torch.ones(num_labels))
        self.register_buffer("output_shift", torch.zeros(num_labels))
        for layer in (self.pooler, self.classifier):  # HF's init
            nn.init.normal_(layer.weight, std=config.initializer_range)
            nn.init.zeros_(layer.bias)

    @torch.no_grad()
    def set_feature_stats(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        """Standardise the pooled vector with these statistics (of the train rows' pooled features).

        A pre-trained encoder's pooled vectors share a large common part and differ little
        (docs/PAPER.md): the pooler's weights, moved by AdamW by ~lr each whatever the input's scale,
        then mostly move that common part. Standardised, every direction counts the same."""
        self.feature_mean.copy_(mean)
        self.feature_std.copy_(std.clamp(min=1e-6))

    @torch.no_grad()
    def set_output_stats(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        self.output_shift.copy_(shift)
        self.output_scale.copy_(scale)

    @torch.no_grad()
    def set_linear_head(self, weight: torch.Tensor, bias: torch.Tensor, scale: float = 0.5) -> None:
        """Start the head as a linear classifier of the standardised pooled vector z: logits ~
        weight @ z + bias ([num_labels, H], [num_labels]: a probe's solution). The pooler becomes
        scale x identity (tanh(scale z) / scale is within 25% of z for |z| < 2) and the classifier
        weight / scale."""
        nn.init.eye_(self.pooler.weight).mul_(scale)
        nn.init.zeros_(self.pooler.bias)
        self.classifier.weight.copy_(weight / scale)
        self.classifier.bias.copy_(bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] ids and mask -> [B, num_labels] logits."""
        pooled = pool(self.bert(input_ids, attention_mask), attention_mask, self.pooling)
        pooled = ((pooled - self.feature_mean) / self.feature_std).to(self.pooler.weight.dtype)
        return self.classifier(self.dropout(torch.tanh(self.pooler(pooled)))) * self.output_scale + self.output_shift
