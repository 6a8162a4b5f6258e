"""BERT for masked-language-model pre-training on DNA tokens, readable top to bottom.

The architecture is the original BERT (post-LayerNorm, learned absolute positions, exact-erf GELU,
an MLM head whose decoder is tied to the word embeddings). Module and parameter names are chosen so
that `model.state_dict()` has exactly the keys of Hugging Face's `BertForMaskedLM`; export is then
`hf_model.load_state_dict(model.state_dict())` with no renaming table to keep in sync. That is why
some names read oddly (`attention.self`, `LayerNorm`, `cls.predictions`): they are HF's.

Two things differ from HF on purpose, both invisible in the weights:
- attention goes through `F.scaled_dot_product_attention`, and when a batch has no padding no mask
  is passed at all, so the fused/flash kernel can run (a mask, even all-True, rules flash out);
- with labels, the MLM head runs only on the masked positions (~15%), as in mosaic-bert: the
  vocabulary projection and its logits are never computed for the other ~85%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import torch
import torch.nn as nn
import torch.nn.functional as F

from megadna.errors import InputError
from megadna.tokenizers.base import IGNORE_INDEX, N_SPECIAL
from megadna.tokenizers.kmer import kmer_base_index


@dataclass
class ModelConfig:
    vocab_size: int  # tokenizer vocabulary, special tokens included
    hidden_size: int
    num_layers: int
    num_heads: int
    intermediate_size: int  # width of the feed-forward block
    max_position_embeddings: int = 512  # longest input in tokens, [CLS] and [SEP] included
    type_vocab_size: int = 2  # kept for HF compatibility; every token is type 0 here
    layer_norm_eps: float = 1e-12
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    initializer_range: float = 0.02  # std of the normal init, as HF
    pad_token_id: int = 0
    # k > 0: the k-mer token embeddings are built from k per-position base embeddings plus a learned
    # residual (see KmerBasis); folded into a plain table by `materialized()`, so exports stay BERT.
    kmer_basis: int = 0

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_layers", "num_heads", "intermediate_size",
                     "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise InputError(f"model config: {name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_heads:
            raise InputError(
                f"model config: hidden_size {self.hidden_size} is not divisible by num_heads "
                f"{self.num_heads}; pick heads that divide it (e.g. {self.hidden_size // 64 or 1})"
            )
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise InputError(f"model config: {name} must be in [0, 1), got {getattr(self, name)!r}")
        if self.layer_norm_eps <= 0 or self.initializer_range <= 0:
            raise InputError("model config: layer_norm_eps and initializer_range must be positive")
        if not isinstance(self.kmer_basis, int) or isinstance(self.kmer_basis, bool) or not 0 <= self.kmer_basis <= 8:
            raise InputError(f"model config: kmer_basis must be 0 (off) or the k of a k-mer vocabulary (1-8), got {self.kmer_basis!r}")
        if self.kmer_basis and self.vocab_size < N_SPECIAL + 4**self.kmer_basis:
            raise InputError(f"model config: kmer_basis {self.kmer_basis} needs the {4**self.kmer_basis} k-mers of a k-mer "
                             f"vocabulary, but vocab_size is {self.vocab_size}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise InputError(
                f"model config: pad_token_id {self.pad_token_id} is outside the vocabulary "
                f"[0, {self.vocab_size})"
            )

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict:
        return asdict(self)

    def to_hf_config(self):
        """The equivalent `transformers.BertConfig` (for export; imports transformers lazily)."""
        from transformers import BertConfig

        return BertConfig(
            vocab_size=self.vocab_size,
            hidden_size=self.hidden_size,
            num_hidden_layers=self.num_layers,
            num_attention_heads=self.num_heads,
            intermediate_size=self.intermediate_size,
            hidden_act="gelu",  # HF's "gelu" is the exact erf form, as used here
            hidden_dropout_prob=self.hidden_dropout,
            attention_probs_dropout_prob=self.attention_dropout,
            max_position_embeddings=self.max_position_embeddings,
            type_vocab_size=self.type_vocab_size,
            initializer_range=self.initializer_range,
            layer_norm_eps=self.layer_norm_eps,
            pad_token_id=self.pad_token_id,
            tie_word_embeddings=True,
        )


class KmerBasis(nn.Module):
    """Embeddings of k-mer tokens built from their bases: the row of k-mer b_1..b_k is
    sum_j weight[4 j + b_j], added to the word-embedding table, which becomes a residual.

    Why: a plain table learns each of the 4^k rows from its own occurrences only (1/4096 of the
    data for 6-mers) and, being tied to the output layer, must also learn to tell 4,096 classes
    apart, before the model can use the fact that neighbouring tokens share k - 1 bases. With the
    basis, a token's bases are linear in its embedding from step 0 and every occurrence of a base
    at a position trains the same row (docs/PAPER.md measures the effect). The effective table is an
    ordinary [vocab, hidden] matrix; `BertForMLM.materialized()` folds it into `word_embeddings`.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(4 * cfg.kmer_basis, cfg.hidden_size))
        index = torch.from_numpy(kmer_base_index(cfg.kmer_basis, cfg.vocab_size))
        self.register_buffer("index", index.clamp(min=0), persistent=False)  # [vocab, k]
        self.register_buffer("present", (index >= 0).unsqueeze(-1), persistent=False)  # [vocab, k, 1]

    def forward(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """[vocab, hidden]: the basis part of every token's embedding (zero for non-k-mer rows), summed
        in `dtype` (default: the weight's)."""
        weight = self.weight if dtype is None else self.weight.to(dtype)
        return (weight[self.index] * self.present.to(weight.dtype)).sum(dim=1)


class Embeddings(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        if cfg.kmer_basis:
            self.kmer_basis = KmerBasis(cfg)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        L = input_ids.shape[1]
        if L > self.position_embeddings.num_embeddings:
            raise InputError(
                f"input of {L} tokens is longer than max_position_embeddings "
                f"{self.position_embeddings.num_embeddings}; use shorter windows or a larger model config"
            )
        # Every token is type 0 and positions are 0..L-1, so both are row slices broadcast over the
        # batch, not lookups (HF computes the same from its position_ids/token_type_ids buffers).
        x = (F.embedding(input_ids, self.word_weight(), padding_idx=self.word_embeddings.padding_idx)
             + self.position_embeddings.weight[:L]
             + self.token_type_embeddings.weight[0])
        return self.dropout(self.LayerNorm(x))

    def word_weight(self, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The [vocab, hidden] token embedding table (also the tied MLM decoder), in `dtype` (default:
        the parameters')."""
        table = self.word_embeddings.weight if dtype is None else self.word_embeddings.weight.to(dtype)
        basis = getattr(self, "kmer_basis", None)
        return table if basis is None else table + basis(dtype)


class SelfAttention(nn.Module):
    """Multi-head self-attention (HF's `attention.self`): q, k, v projections + fused SDPA."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.num_heads = cfg.num_heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.value = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.dropout_p = cfg.attention_dropout

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        B, L, H = x.shape
        q, k, v = (proj(x).view(B, L, self.num_heads, -1).transpose(1, 2)
                   for proj in (self.query, self.key, self.value))  # each [B, heads, L, head_dim]
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=attn_mask, dropout_p=self.dropout_p if self.training else 0.0
        )
        return y.transpose(1, 2).reshape(B, L, H)


class DenseResidualNorm(nn.Module):
    """Projection, dropout, residual add, then LayerNorm: post-LN BERT (HF's `*.output`)."""

    def __init__(self, d_in: int, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(d_in, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dropout(self.dense(x)))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.self = SelfAttention(cfg)  # `self.self` because HF's key is `attention.self.query`
        self.output = DenseResidualNorm(cfg.hidden_size, cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, attn_mask), x)


class Intermediate(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # exact erf GELU, HF's "gelu" (not the tanh approximation)


class Layer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.attention = Attention(cfg)
        self.intermediate = Intermediate(cfg)
        self.output = DenseResidualNorm(cfg.intermediate_size, cfg)

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.attention(x, attn_mask)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg) for _ in range(cfg.num_layers))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layer:
            x = layer(x, attn_mask)
        return x


class Bert(nn.Module):
    """The encoder stack without a head (HF's `bert`; BertForMaskedLM has no pooler)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(self.embeddings(input_ids), sdpa_mask(attention_mask))

    def hidden_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, upto: int | None = None) -> list[torch.Tensor]:
        """The embedding output, then each layer's output (HF's output_hidden_states): num_layers + 1
        tensors [B, L, hidden_size]; the last is what `forward` returns. `upto`: stop after hidden
        state `upto` (0 = the embeddings), without running the layers above it."""
        mask = sdpa_mask(attention_mask)
        out = [self.embeddings(input_ids)]
        for layer in self.encoder.layer[:upto]:
            out.append(layer(out[-1], mask))
        return out


def sdpa_mask(attention_mask: torch.Tensor | None) -> torch.Tensor | None:
    """Key-padding mask for SDPA, or None when nothing is padded.

    attention_mask: [B, L], 1/True for real tokens, 0/False for padding. Returns a boolean [B, 1, 1, L]
    (True = may attend) broadcast over heads and queries, or None so that SDPA may pick the flash
    kernel, which takes no mask. Deciding that costs one device-to-host sync per forward (not per
    layer); pre-training batches are unpadded windows, and a trainer that knows it can pass None.
    """
    if attention_mask is None:
        return None
    keep = attention_mask.bool()
    if bool(keep.all()):
        return None
    # A row with no real token at all would softmax over nothing and turn NaN (poisoning gradients
    # through the batch); let such rows attend everywhere instead. Their outputs are never used.
    keep = keep | ~keep.any(dim=-1, keepdim=True)
    return keep[:, None, None, :]


class PredictionHeadTransform(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class LMPredictionHead(nn.Module):
    """transform, then the decoder onto the vocabulary; decoder weight tied to word embeddings."""

    def __init__(self, cfg: ModelConfig, embeddings: Embeddings):
        super().__init__()
        self.transform = PredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.decoder.weight = embeddings.word_embeddings.weight  # tied: one tensor, two state_dict keys (as HF)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.decoder.bias = self.bias  # HF keeps both `cls.predictions.bias` and `.decoder.bias`, one tensor
        self._word_weight = embeddings.word_weight if cfg.kmer_basis else None  # the k-mer basis is tied too

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._word_weight is None:
            return self.decoder(self.transform(x))
        return F.linear(self.transform(x), self._word_weight(), self.bias)


class OnlyMLMHead(nn.Module):
    def __init__(self, cfg: ModelConfig, embeddings: Embeddings):
        super().__init__()
        self.predictions = LMPredictionHead(cfg, embeddings)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.predictions(x)


class BertForMLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.bert = Bert(cfg)
        self.cls = OnlyMLMHead(cfg, self.bert.embeddings)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        """HF's BERT init: normal(0, initializer_range) weights, zero biases, LayerNorm (1, 0)."""
        std = self.config.initializer_range
        if module is self.cls.predictions.decoder:
            nn.init.zeros_(module.bias)  # its weight is the word embeddings, initialised there
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.padding_idx is not None:
                with torch.no_grad():
                    module.weight[module.padding_idx].zero_()
        elif isinstance(module, nn.LayerNorm):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, LMPredictionHead):
            nn.init.zeros_(module.bias)
        elif isinstance(module, KmerBasis):
            nn.init.normal_(module.weight, mean=0.0, std=std)

    def materialized(self) -> BertForMLM:
        """This model with any k-mer basis folded into the word embeddings: a plain BERT whose
        state_dict has exactly Hugging Face's keys, computing the same function, in fp32 (the fold is
        summed in fp32). Itself if no basis. Draws nothing from the global random generator."""
        if not self.config.kmer_basis:
            return self
        with torch.random.fork_rng(devices=[]):  # the throwaway init must not move anyone's seed
            plain = BertForMLM(replace(self.config, kmer_basis=0))
        state = {k: v.float() for k, v in self.state_dict().items() if ".kmer_basis." not in k}
        with torch.no_grad():
            table = self.bert.embeddings.word_weight(torch.float32)
        state["bert.embeddings.word_embeddings.weight"] = state["cls.predictions.decoder.weight"] = table
        plain.load_state_dict(state, strict=True)
        return plain.to(table.device).train(self.training)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Last hidden states [B, L, hidden_size], for downstream classifiers."""
        return self.bert(input_ids, attention_mask)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """input_ids, attention_mask, labels: [B, L]; labels hold -100 where nothing is predicted.

        With labels: {"loss": mean cross-entropy over predicted positions, "n_masked", "n_correct"},
        all tensors (no host sync to read them; log them when you sync anyway).
        Without labels: {"logits": [B, L, vocab_size]} over every position (parity, export, eval).
        """
        hidden = self.bert(input_ids, attention_mask)
        if labels is None:
            return {"logits": self.cls(hidden)}

        # Project only the predicted positions onto the vocabulary. Boolean indexing is one
        # device-to-host sync (the count of masked tokens sets the output shape); it saves
        # ~85% of the head's FLOPs and of the [tokens, vocab] logits memory.
        predicted = labels != IGNORE_INDEX
        targets = labels[predicted]
        logits = self.cls(hidden[predicted]).float()  # fp32 softmax even when the model runs in bf16
        n_masked = predicted.sum()
        loss = F.cross_entropy(logits, targets, reduction="sum") / n_masked.clamp(min=1)
        n_correct = (logits.argmax(dim=-1) == targets).sum()
        return {"loss": loss, "n_masked": n_masked, "n_correct": n_correct}

    def num_parameters(self, non_embedding: bool = False) -> int:
        """Parameter count (the tied decoder counted once). non_embedding drops the position and
        token-type tables, which do no matmul; the word embeddings stay, as they are the decoder."""
        n = sum(p.numel() for p in self.parameters())  # parameters() yields tied tensors once
        if non_embedding:
            emb = self.bert.embeddings
            n -= emb.position_embeddings.weight.numel() + emb.token_type_embeddings.weight.numel()
        return n

    def flops_per_token(self, seq_len: int, mask_ratio: float = 0.15) -> float:
        """Training FLOPs per input token (forward + backward = 3x forward; a multiply-add is 2 FLOPs).

        nanoGPT/PaLM accounting: 6 FLOPs per matmul weight per token, plus 12 * layers * hidden *
        seq_len for the attention scores and the weighted sum of values (which have no weights).
        The MLM head (transform + vocabulary decoder) runs only on masked tokens, so it is counted on
        `mask_ratio` of them; pass the realised ratio for an exact count, 1.0 for a full-logits head.
        Embedding lookups, biases, LayerNorm, softmax and GELU are left out (small), so for MFU this
        is the customary slight under-count. Multiply by tokens/s to get FLOP/s.
        """
        c = self.config
        H, n_layers = c.hidden_size, c.num_layers
        encoder = n_layers * (4 * H * H + 2 * H * c.intermediate_size)  # q, k, v, out; FFN in, out
        head = H * H + H * c.vocab_size  # transform.dense + decoder
        attention = 12 * n_layers * H * seq_len
        return 6.0 * (encoder + mask_ratio * head) + attention
