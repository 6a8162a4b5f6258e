"""The stack learns the k-mer overlap: on random DNA (nothing else to learn) a tiny model reaches the
accuracy that the overlap allows, in seconds. A bug in the model, masking, pieces or k-mer basis that
keeps it from reading masked tokens off their neighbours leaves it at the ~10% that copying the
unchanged 10% of masked tokens gives."""

import pytest
import torch

from megadna.cli import learn_overlap as cli
from megadna.errors import InputError
from megadna.experiments.overlap import OverlapConfig, learn_overlap, recoverable_share, steps_to


def test_recoverable_share_counts_tokens_whose_bases_all_show():
    ids = torch.tensor([[2, 10, 11, 12, 13, 14, 15, 3]])  # [CLS] six 3-mers [SEP]
    labels = torch.full_like(ids, -100)
    labels[0, 3] = 12  # its bases are all spelled by unmasked neighbours
    assert recoverable_share(ids, labels, 3) == 1.0
    labels[0, 1] = 10  # the first token's first base is spelled by no other token
    assert recoverable_share(ids, labels, 3) == 0.5
    labels = torch.full_like(ids, -100)
    labels[0, 3:6] = ids[0, 3:6]  # three in a row: the middle base of the run is spelled by none visible
    assert recoverable_share(ids, labels, 3) == 0.0
    # k = 6 over ten tokens: one masked token alone is recoverable except at either end of the window
    ids = torch.tensor([[2, *range(10, 20), 3]])
    alone = []
    for t in range(1, 11):
        labels = torch.full_like(ids, -100)
        labels[0, t] = ids[0, t]
        alone.append(recoverable_share(ids, labels, 6))
    assert alone == [0.0] + [1.0] * 8 + [0.0]


def test_tiny_model_learns_the_overlap_of_random_dna(one_torch_thread):
    r = learn_overlap(OverlapConfig(tokenizer="kmer3", window_bp=12, batch=32, steps=600, lr=4e-3, eval_every=100), log=lambda _: None)
    first, last = r["curve"][0], r["curve"][-1]
    assert first["heldout_accuracy"] < 0.15  # chance plus copying the unchanged tokens
    # A model that reads masked tokens off their neighbours gets every recoverable token right and
    # guesses some of the rest: it ends above the recoverable share.
    assert last["heldout_accuracy"] >= r["heldout_ceiling"] > 0.6, r["curve"]
    assert last["loss"] < 1.2 and steps_to(r["curve"], "heldout_accuracy", 0.5) <= 400


def test_cli_writes_the_result_and_a_table(tmp_path, capsys, one_torch_thread):
    assert cli.main(["--tokenizers", "kmer2,nkmer2", "--window_bp", "10", "--steps", "4", "--eval_every", "2", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "| kmer2 |" in out and "| nkmer2 |" in out
    assert (tmp_path / "result.json").is_file() and (tmp_path / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_bad_settings_are_named():
    with pytest.raises(InputError, match="--masking"):
        OverlapConfig(masking="spans")
    with pytest.raises(InputError, match="--steps must be >= 1"):
        OverlapConfig(steps=0)
