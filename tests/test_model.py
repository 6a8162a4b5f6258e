"""megadna.model against Hugging Face's BertForMaskedLM: same keys, same logits, same loss."""

import pytest
import torch
import torch.nn.functional as F

from megadna.errors import InputError
from megadna.model import PRESETS, BertForMLM, ModelConfig, model_config

transformers = pytest.importorskip("transformers")

VOCAB = 4**6 + 5  # overlapping 6-mers + 5 special tokens


def _model(preset="tiny", vocab=VOCAB, seed=0, **overrides):
    torch.manual_seed(seed)
    model = BertForMLM(model_config(preset, vocab, **overrides))
    # Move biases and LayerNorm affines off their (0, 1) init, so that a bias or LayerNorm wired to
    # the wrong place changes the output instead of adding zero / multiplying by one.
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def _hf(model: BertForMLM, attn_implementation="sdpa"):
    hf = transformers.BertForMaskedLM._from_config(
        model.config.to_hf_config(), attn_implementation=attn_implementation
    )
    hf.load_state_dict(model.state_dict(), strict=True)
    return hf.eval()


def _batch(B=3, L=48, vocab=VOCAB, pad_from=None, seed=1):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, vocab, (B, L), generator=g)
    ids[:, 0] = 2  # [CLS]
    ids[:, -1] = 3  # [SEP]
    mask = torch.ones(B, L, dtype=torch.long)
    if pad_from is not None:  # row 1 is shorter: [SEP] then padding
        ids[1, pad_from - 1] = 3
        ids[1, pad_from:] = 0
        mask[1, pad_from:] = 0
    return ids, mask


def test_state_dict_keys_equal_hf_and_load_strictly():
    model = _model()
    hf = transformers.BertForMaskedLM(model.config.to_hf_config())
    assert list(model.state_dict()) == list(hf.state_dict())
    for key, value in hf.state_dict().items():
        assert model.state_dict()[key].shape == value.shape, key
    # The reverse direction too: an HF checkpoint loads into ours.
    model.load_state_dict(hf.state_dict(), strict=True)
    hf2 = _hf(model)
    for key, value in model.state_dict().items():
        assert torch.equal(hf2.state_dict()[key], value), key


def test_decoder_is_tied_to_word_embeddings():
    model = _model()
    pred = model.cls.predictions
    assert pred.decoder.weight is model.bert.embeddings.word_embeddings.weight
    assert pred.decoder.bias is pred.bias
    # Tied tensors are counted once.
    assert model.num_parameters() == sum(p.numel() for p in {id(p): p for p in model.parameters()}.values())


@pytest.mark.parametrize("preset", ["tiny", "small"])
@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_full_logits_match_hf(preset, attn_implementation):
    model = _model(preset).eval()
    hf = _hf(model, attn_implementation)
    ids, mask = _batch(pad_from=30)
    with torch.no_grad():
        ours = model(ids, attention_mask=mask)["logits"]
        theirs = hf(input_ids=ids, attention_mask=mask).logits
        ours_unpadded = model(ids[[0, 2]])["logits"]  # no mask at all: the fused path
    assert ours.shape == (3, 48, VOCAB)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    torch.testing.assert_close(ours_unpadded, theirs[[0, 2]], atol=1e-5, rtol=0)


def test_masked_only_loss_matches_hf_loss():
    model = _model("small").eval()
    hf = _hf(model)
    ids, mask = _batch(B=4, L=64, pad_from=40)
    g = torch.Generator().manual_seed(3)
    chosen = (torch.rand(ids.shape, generator=g) < 0.2) & (ids >= 5)
    labels = torch.where(chosen, ids, -100)
    inputs = torch.where(chosen, 4, ids)
    with torch.no_grad():
        out = model(inputs, attention_mask=mask, labels=labels)
        ref = hf(input_ids=inputs, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out["loss"], ref.loss, atol=1e-5, rtol=0)
    assert out["n_masked"].item() == chosen.sum().item()
    predicted = ref.logits[chosen].argmax(-1)
    assert out["n_correct"].item() == (predicted == ids[chosen]).sum().item()
    assert all(isinstance(v, torch.Tensor) for v in out.values())


def test_head_projects_only_masked_positions():
    model = _model().eval()
    ids, _ = _batch(B=2, L=40)
    labels = torch.full_like(ids, -100)
    labels[0, 5] = ids[0, 5]
    labels[1, 7:10] = ids[1, 7:10]
    rows = []
    model.cls.predictions.decoder.register_forward_hook(lambda m, inp, out: rows.append(inp[0].shape))
    model(ids, labels=labels)
    assert rows == [torch.Size([4, model.config.hidden_size])]


def _record_sdpa(monkeypatch):
    calls = []
    real = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, dropout_p=0.0, **kw):
        calls.append((attn_mask, dropout_p))
        return real(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, **kw)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return calls


def test_no_mask_reaches_sdpa_without_padding(monkeypatch):
    calls = _record_sdpa(monkeypatch)
    model = _model().eval()
    ids, mask = _batch()
    model(ids)
    model(ids, attention_mask=mask)  # all ones: still no mask, so the flash kernel stays eligible
    assert len(calls) == 2 * model.config.num_layers
    assert all(m is None and p == 0.0 for m, p in calls)

    calls.clear()
    ids, mask = _batch(pad_from=30)
    model(ids, attention_mask=mask)
    m, _ = calls[0]
    assert m.dtype == torch.bool and m.shape == (3, 1, 1, 48)
    assert torch.equal(m[:, 0, 0], mask.bool())


def test_attention_dropout_only_in_training(monkeypatch):
    calls = _record_sdpa(monkeypatch)
    model = _model(attention_dropout=0.25)
    ids, _ = _batch()
    model.train()(ids)
    assert {p for _, p in calls} == {0.25}
    calls.clear()
    model.eval()(ids)
    assert {p for _, p in calls} == {0.0}


def test_all_padding_row_does_not_poison_the_batch():
    model = _model().train()
    ids, mask = _batch()
    ids[2, :] = 0
    mask[2, :] = 0
    labels = torch.where(mask.bool() & (torch.arange(48) % 5 == 0), ids, -100)
    out = model(ids, attention_mask=mask, labels=labels)
    out["loss"].backward()
    assert torch.isfinite(out["loss"])
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_gradients_reach_every_parameter():
    model = _model().train()
    ids, mask = _batch(pad_from=30)
    labels = torch.where((torch.arange(48) % 4 == 1) & mask.bool() & (ids >= 5), ids, -100)
    model(ids, attention_mask=mask, labels=labels)["loss"].backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
        assert p.grad.abs().sum() > 0, name


def test_hf_style_init():
    torch.manual_seed(0)
    model = BertForMLM(model_config("small", VOCAB))
    sd = model.state_dict()
    q = sd["bert.encoder.layer.0.attention.self.query.weight"]
    assert abs(q.std().item() - 0.02) < 0.001 and abs(q.mean().item()) < 0.001
    assert (sd["bert.encoder.layer.0.attention.self.query.bias"] == 0).all()
    assert (sd["bert.encoder.layer.0.output.LayerNorm.weight"] == 1).all()
    assert (sd["cls.predictions.bias"] == 0).all()
    assert (sd["bert.embeddings.word_embeddings.weight"][0] == 0).all()  # padding row
    assert abs(sd["bert.embeddings.word_embeddings.weight"][5:].std().item() - 0.02) < 0.001


def test_flops_per_token():
    model = _model("small")
    c = model.config
    # Short sequences, head on every token: ~6 FLOPs per matmul weight, i.e. ~6 x parameters
    # (less a little: biases and LayerNorms do no matmul).
    ratio = model.flops_per_token(seq_len=1, mask_ratio=1.0) / (6 * model.num_parameters(non_embedding=True))
    assert 0.97 < ratio <= 1.0
    # The attention term is 12 * layers * hidden per token of context.
    grow = model.flops_per_token(512) - model.flops_per_token(0)
    assert grow == pytest.approx(12 * c.num_layers * c.hidden_size * 512)
    # The head counted on the masked share only.
    head = c.hidden_size**2 + c.hidden_size * c.vocab_size
    diff = model.flops_per_token(128, mask_ratio=1.0) - model.flops_per_token(128, mask_ratio=0.15)
    assert diff == pytest.approx(6 * 0.85 * head)


def test_presets_build():
    assert set(PRESETS) == {"dnabert-base", "small", "tiny"}
    for name in ("tiny", "small"):
        model = BertForMLM(model_config(name, VOCAB))
        out = model(_batch(B=2, L=16)[0])
        assert out["logits"].shape == (2, 16, VOCAB)
    base = model_config("dnabert-base", VOCAB)
    assert (base.num_layers, base.hidden_size, base.num_heads, base.intermediate_size) == (12, 768, 12, 3072)
    with torch.device("meta"):  # shape only: DNABERT (BERT-base with 4101 tokens) is ~89M parameters
        n = BertForMLM(base).num_parameters()
    assert 88e6 < n < 90e6
    assert model_config("tiny", VOCAB, hidden_dropout=0.0).hidden_dropout == 0.0


def test_config_validation_and_hf_config():
    with pytest.raises(InputError, match="divisible"):
        ModelConfig(vocab_size=10, hidden_size=66, num_layers=1, num_heads=4, intermediate_size=8)
    with pytest.raises(InputError, match="dnabert-base, small, tiny"):
        model_config("huge", VOCAB)
    with pytest.raises(InputError, match="unknown model config field"):
        model_config("tiny", VOCAB, n_layers=3)
    with pytest.raises(InputError, match="pad_token_id"):
        model_config("tiny", 4, pad_token_id=7)
    cfg = model_config("tiny", VOCAB)
    hf = cfg.to_hf_config()
    assert (hf.num_hidden_layers, hf.hidden_size, hf.num_attention_heads, hf.intermediate_size) == (2, 64, 2, 256)
    assert hf.hidden_act == "gelu" and hf.vocab_size == VOCAB
    assert cfg.to_dict()["vocab_size"] == VOCAB


def test_too_long_input_is_a_clear_error():
    model = _model(max_position_embeddings=32)
    with pytest.raises(InputError, match="max_position_embeddings 32"):
        model(torch.full((1, 33), 7))


# --------------------------------------------------------------------------------------------------
# The k-mer basis (ModelConfig.kmer_basis): trained as a factorised table, exported as a plain one
# --------------------------------------------------------------------------------------------------


def test_kmer_base_index_spells_every_kmer_of_both_vocabularies():
    from megadna.tokenizers import get_tokenizer
    from megadna.tokenizers.kmer import kmer_base_index

    for name in ("kmer3", "nkmer3"):
        tok = get_tokenizer(name)
        index = kmer_base_index(3, tok.vocab_size)
        for token_id in range(tok.vocab_size):
            spelled = "".join("ACGT"[c % 4] for c in index[token_id]) if index[token_id, 0] >= 0 else None
            token = tok.vocab[token_id]
            if len(token) == 3 and set(token) <= set("ACGT"):
                assert spelled == token and list(index[token_id] // 4) == [0, 1, 2], (name, token_id)
            else:
                assert (index[token_id] == -1).all(), (name, token)  # specials, single bases


def test_kmer_basis_embeds_a_kmer_as_the_sum_of_its_bases_plus_the_residual():
    model = _model(kmer_basis=6)
    emb = model.bert.embeddings
    acgtac = 5 + int("012301", 4)  # rank of ACGTAC in base 4
    expected = emb.word_embeddings.weight[acgtac] + sum(emb.kmer_basis.weight[4 * j + "ACGT".index(b)] for j, b in enumerate("ACGTAC"))
    assert torch.allclose(emb.word_weight()[acgtac], expected)
    assert torch.equal(emb.word_weight()[:5], emb.word_embeddings.weight[:5])  # specials: residual only


def test_materialized_basis_model_is_plain_bert_with_equal_logits_and_loss():
    model = _model(kmer_basis=6).eval()
    plain = model.materialized()
    assert plain.config.kmer_basis == 0 and not any("kmer_basis" in k for k in plain.state_dict())
    ids, mask = _batch(pad_from=30)
    with torch.no_grad():
        assert torch.allclose(model(ids, mask)["logits"], plain(ids, mask)["logits"], atol=1e-5)
        assert torch.allclose(_hf(plain)(input_ids=ids, attention_mask=mask).logits, model(ids, mask)["logits"], atol=1e-4)
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.3, ids, -100)
    with torch.no_grad():
        assert torch.allclose(model(ids, mask, labels)["loss"], plain(ids, mask, labels)["loss"], atol=1e-5)
    assert _model().materialized().config.kmer_basis == 0


def test_basis_gradients_reach_the_basis_and_the_residual():
    model = _model(kmer_basis=6)
    ids, _ = _batch()
    labels = torch.where(torch.rand(ids.shape, generator=torch.Generator().manual_seed(3)) < 0.3, ids, -100)
    model(ids, None, labels)["loss"].backward()
    assert model.bert.embeddings.kmer_basis.weight.grad.abs().sum() > 0
    assert model.bert.embeddings.word_embeddings.weight.grad.abs().sum() > 0


def test_kmer_basis_config_is_checked():
    with pytest.raises(InputError, match="kmer_basis 6 needs the 4096 k-mers"):
        model_config("tiny", 100, kmer_basis=6)
    with pytest.raises(InputError, match="kmer_basis must be 0"):
        model_config("tiny", VOCAB, kmer_basis=-1)


def test_classifier_reads_cls_or_the_mean_over_real_tokens():
    from megadna.model.heads import BertClassifier

    model = _model().eval()
    ids, mask = _batch(pad_from=30)
    torch.manual_seed(0)
    cls_head = BertClassifier(model.bert, model.config, 2, pooling="cls").eval()
    torch.manual_seed(0)
    mean_head = BertClassifier(model.bert, model.config, 2, pooling="mean").eval()
    with torch.no_grad():
        h = model.bert(ids, mask)
        m = mask.float().unsqueeze(-1)
        for head, pooled in ((cls_head, h[:, 0]), (mean_head, (h * m).sum(1) / m.sum(1))):
            expected = head.classifier(torch.tanh(head.pooler(pooled)))
            assert torch.allclose(head(ids, mask), expected, atol=1e-6)
    with pytest.raises(ValueError, match="pooling"):
        BertClassifier(model.bert, model.config, 2, pooling="max")
