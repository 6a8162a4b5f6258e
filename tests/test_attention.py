"""tools/analyze_attention.py: the weights it reports are the ones the forward pass uses."""

import json
import math

import pytest
import torch

from megadna.cli import analyze_attention as cli
from megadna.data.synthetic import write_synthetic_fasta
from megadna.errors import InputError
from megadna.experiments.attention import attention_probs, head_statistics
from megadna.model import BertForMLM, model_config
from megadna.model.export import write_hf_dir
from megadna.tokenizers import get_tokenizer


def _model(seed=0):
    torch.manual_seed(seed)
    return BertForMLM(model_config("tiny", 4**3 + 5)).eval()


def test_probs_reproduce_each_layers_attention_output():
    model = _model()
    ids = torch.randint(5, 69, (2, 20))
    mask = torch.ones_like(ids)
    mask[1, 15:] = 0
    hidden = model.bert.hidden_states(ids, mask)
    for layer, x, p in zip(model.bert.encoder.layer, hidden, attention_probs(model, ids, mask)):
        attn = layer.attention.self
        v = attn.value(x).view(2, 20, attn.num_heads, -1).transpose(1, 2)
        mine = (p @ v).transpose(1, 2).reshape(2, 20, -1)
        from megadna.model.bert import sdpa_mask

        assert torch.allclose(mine, attn(x, sdpa_mask(mask)), atol=1e-5)
        assert torch.allclose(p.sum(-1), torch.ones_like(p.sum(-1)))
        assert (p[1, :, :, 15:] == 0).all()  # no weight on padding


def test_statistics_of_uniform_and_one_hot_heads(monkeypatch):
    from megadna.experiments import attention

    L = 10
    uniform = torch.full((1, 2, L, L), 1.0 / L)
    neighbour = torch.zeros(1, 2, L, L)
    neighbour[0, :, torch.arange(L), (torch.arange(L) + 1) % L] = 1.0  # each query looks at the next token
    monkeypatch.setattr(attention, "attention_probs", lambda *a: iter([uniform, neighbour]))
    s = head_statistics(None, torch.zeros(1, L, dtype=torch.long), None, k=3)
    assert s["entropy"][0] == pytest.approx([math.log(L)] * 2) and s["top1"][0] == pytest.approx([0.1] * 2)
    assert s["overlap_share"][0] == pytest.approx([2 * ((L - 1) + (L - 2)) / L / L] * 2)  # keys 1 and 2 away, on both sides
    assert s["entropy"][1] == pytest.approx([0.0] * 2, abs=1e-6) and s["top1"][1] == pytest.approx([1.0] * 2)
    assert s["overlap_share"][1] == pytest.approx([(L - 1) / L] * 2)  # the last query wraps to token 0, far away


def test_cli_compares_models_on_the_same_windows(tmp_path, capsys):
    tok = get_tokenizer("kmer3")
    for i in range(2):
        write_hf_dir(_model(seed=i), tok, tmp_path / f"m{i}")
    fasta = tmp_path / "g.fa"
    write_synthetic_fasta(fasta, n_contigs=1, length=5000)
    out = tmp_path / "report"
    assert cli.main(["--models", f"{tmp_path / 'm0'},{tmp_path / 'm1'}", "--names", "a,b", "--fasta", str(fasta), "--window_bp", "60", "--windows", "4", "--out", str(out)]) == 0
    result = json.loads((out / "attention.json").read_text())
    assert set(result) == {"a", "b"} and result["a"]["k"] == 3 and result["a"]["tokens"] == 60
    assert len(result["a"]["heads"]["entropy"]) == 2 and len(result["a"]["heads"]["entropy"][0]) == 2  # layers x heads
    assert "| b | 2 |" in capsys.readouterr().out and (out / "attention.png").read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(SystemExit) as exc:  # two models of one name would be one row: refused
        cli.main(["--models", f"{tmp_path / 'm0'},{tmp_path / 'm0'}", "--fasta", str(fasta), "--out", str(out)])
    assert exc.value.code == 2 and "named alike" in capsys.readouterr().err
    with pytest.raises(InputError, match="one of the two"):
        cli._windows(cli.build_parser().parse_args(["--models", "x", "--out", "y"]))
