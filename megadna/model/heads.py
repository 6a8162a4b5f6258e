"""Task heads on megadna's BERT encoder. `BertClassifier`: sequence classification, as Hugging Face's
BertForSequenceClassification (the class DNABERT-2 was fine-tuned through, so comparisons stay like
for like)."""

from __future__ import annotations

import torch
import torch.nn as nn

from megadna.model.bert import Bert, ModelConfig


class BertClassifier(nn.Module):
    """megadna's BERT encoder + HF BertForSequenceClassification's head on [CLS].

    pooler: dense + tanh on the [CLS] hidden state (HF's BertPooler), then dropout (the encoder's
    hidden dropout, as HF's classifier_dropout=None) and a linear layer to num_labels logits. The
    pooler is new (pre-training has no next-sentence task), so it starts from random init, as in HF.
    """

    def __init__(self, bert: Bert, config: ModelConfig, num_labels: int):
        super().__init__()
        self.config = config
        self.bert = bert
        self.pooler = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = nn.Dropout(config.hidden_dropout)
        self.classifier = nn.Linear(config.hidden_size, num_labels)
        for layer in (self.pooler, self.classifier):  # HF's init
            nn.init.normal_(layer.weight, std=config.initializer_range)
            nn.init.zeros_(layer.bias)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """[B, L] ids and mask -> [B, num_labels] logits."""
        cls = self.bert(input_ids, attention_mask)[:, 0]
        return self.classifier(self.dropout(torch.tanh(self.pooler(cls))))
