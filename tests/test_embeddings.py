"""tools/analyze_embeddings.py: the share of a k-mer table that is linear in its bases."""

import json

import numpy as np
import pytest
import torch

from megadna.cli import analyze_embeddings as cli
from megadna.errors import InputError
from megadna.experiments.embeddings import base_linear_share, kmer_rows, random_table_share
from megadna.model import BertForMLM, model_config
from megadna.model.export import write_hf_dir
from megadna.tokenizers import get_tokenizer
from megadna.tokenizers.kmer import N_SPECIAL, kmer_base_index


def _basis_table(k, hidden, rng):
    """A [N_SPECIAL + 4^k, hidden] table whose k-mer rows are sums of one vector per (position, base)."""
    per_base = rng.normal(size=(4 * k, hidden))
    index = kmer_base_index(k, N_SPECIAL + 4**k)
    table = rng.normal(size=(N_SPECIAL + 4**k, hidden))
    table[N_SPECIAL:] = per_base[index[N_SPECIAL:]].sum(axis=1)
    return table


def test_a_random_table_scores_its_expected_share_and_a_basis_table_one():
    rng = np.random.default_rng(0)
    k = 3
    shares = [base_linear_share(rng.normal(size=(N_SPECIAL + 4**k, 64)), k) for _ in range(20)]
    assert np.mean(shares) == pytest.approx(random_table_share(k), abs=0.005)  # 9 / 63; the mean's sd is ~0.002
    assert base_linear_share(rng.normal(size=(N_SPECIAL + 4, 8)), 1) == pytest.approx(1.0) == random_table_share(1)
    basis = _basis_table(k, 64, rng)
    assert base_linear_share(basis, k) == pytest.approx(1.0, abs=1e-9)
    # A residual with as much variance as the basis part: (1 + 9/63) / 2 expected.
    noise = rng.normal(size=basis.shape)
    noise[N_SPECIAL:] *= np.sqrt(kmer_rows(basis, k).var(axis=0).sum() / noise[N_SPECIAL:].var(axis=0).sum())
    mixed = base_linear_share(basis + noise, k)
    assert mixed == pytest.approx((1 + random_table_share(k)) / 2, abs=0.05)
    # The special rows do not count.
    basis[:N_SPECIAL] = 1e6
    assert base_linear_share(basis, k) == pytest.approx(1.0, abs=1e-9)
    with pytest.raises(InputError, match="does not hold the 5 special and 64 k-mer rows"):
        base_linear_share(rng.normal(size=(4**k, 8)), k)


def test_cli_reads_the_folded_table_of_a_basis_model(tmp_path, capsys):
    torch.manual_seed(0)
    model = BertForMLM(model_config("tiny", N_SPECIAL + 4**3, kmer_basis=3))
    with torch.no_grad():
        model.bert.embeddings.kmer_basis.weight.mul_(100)  # the basis dominates the (0.02-scale) residual
    write_hf_dir(model, get_tokenizer("kmer3"), tmp_path / "basis")
    write_hf_dir(BertForMLM(model_config("tiny", N_SPECIAL + 4**3)), get_tokenizer("kmer3"), tmp_path / "plain")
    out = tmp_path / "report"
    assert cli.main(["--models", f"{tmp_path / 'basis'},{tmp_path / 'plain'}", "--names", "b,p", "--out", str(out)]) == 0
    result = json.loads((out / "embeddings.json").read_text())
    assert result["b"]["base_linear_share"] > 0.99 and result["p"]["base_linear_share"] < 0.3
    assert "| b | 3 |" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exc:  # two exports in folders of one name: refused, not merged into one row
        cli.main(["--models", f"{tmp_path / 'basis'},{tmp_path / 'basis'}"])
    assert exc.value.code == 2 and "named alike" in capsys.readouterr().err


def test_cli_refuses_a_model_without_a_kmer_vocabulary(tmp_path, capsys):
    write_hf_dir(BertForMLM(model_config("tiny", get_tokenizer("base").vocab_size)), get_tokenizer("base"), tmp_path / "m")
    with pytest.raises(SystemExit) as exc:
        cli.main(["--models", str(tmp_path / "m")])
    assert exc.value.code == 2 and "is not a k-mer vocabulary" in capsys.readouterr().err
