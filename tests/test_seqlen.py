"""The sequence-length curriculum: the staircase, and windows cut into pieces without losing a token."""

import pytest
import torch

from megadna.errors import InputError
from megadna.seqlen import Stage, parse_schedule, seq_len_at, split_windows
from megadna.train.config import TrainConfig


def test_parse_and_staircase():
    stages = parse_schedule("34:0.3, 130:0.6")
    assert stages == (Stage(34, 0.3), Stage(130, 0.6))
    lengths = [seq_len_at(stages, s, 100, 507) for s in range(100)]
    assert lengths[:30] == [34] * 30 and lengths[30:60] == [130] * 30 and lengths[60:] == [507] * 40
    assert seq_len_at(parse_schedule("600:0.5"), 0, 10, 507) == 507  # never longer than the window
    assert parse_schedule("") == () and seq_len_at((), 5, 10, 507) == 507
    assert [seq_len_at(parse_schedule("34:0.5,130:1"), s, 10, 507) for s in (4, 5, 9)] == [34, 130, 130]  # never whole windows


@pytest.mark.parametrize("text, match", [
    ("34", "TOKENS:FRACTION"), ("x:0.3", "not TOKENS:FRACTION"), ("2:0.3", "TOKENS >= 3"),
    ("130:0.3,34:0.6", "must grow"), ("34:0.6,130:0.3", "must grow"), ("34:1.5", r"in \(0, 1\]"), ("34:0", r"in \(0, 1\]"),
])
def test_bad_schedules_are_named(text, match):
    with pytest.raises(InputError, match=match):
        parse_schedule(text)
    with pytest.raises(InputError, match=match):
        TrainConfig(seq_len_schedule=text)


def _windows(B=3, L=23, pad_from=None):
    ids = torch.arange(100, 100 + B * L).reshape(B, L)
    ids[:, 0], ids[:, -1] = 2, 3
    mask = None
    if pad_from is not None:
        mask = torch.ones(B, L, dtype=torch.long)
        ids[1, pad_from - 1], ids[1, pad_from:], mask[1, pad_from:] = 3, 0, 0
    return ids, mask


def test_pieces_hold_every_body_token_in_order_when_they_divide_the_window():
    ids, _ = _windows(B=3, L=23)  # 21 body tokens -> 3 pieces of 7
    pieces, mask = split_windows(ids, None, 9)
    assert mask is None and pieces.shape == (9, 9)
    assert (pieces[:, 0] == 2).all() and (pieces[:, -1] == 3).all()
    assert torch.equal(pieces[:, 1:-1].reshape(3, 21), ids[:, 1:-1])


def test_a_short_tail_is_dropped_and_full_length_is_unchanged():
    ids, _ = _windows(B=2, L=23)  # 21 body tokens -> 2 pieces of 8, 5 dropped
    pieces, _ = split_windows(ids, None, 10)
    assert pieces.shape == (4, 10) and torch.equal(pieces[:, 1:-1].reshape(2, 16), ids[:, 1:17])
    same, _ = split_windows(ids, None, 23)
    assert same is ids


def test_padded_rows_keep_their_mask_and_empty_pieces_go():
    ids, mask = _windows(B=3, L=23, pad_from=6)  # row 1: [CLS] 4 tokens [SEP] then padding
    pieces, pmask = split_windows(ids, mask, 9)  # bodies of 7: row 1's first piece is partly padding
    assert pieces.shape == (7, 9) and pmask.shape == (7, 9)  # row 1 keeps only its first piece
    row1 = pieces[3]
    assert row1.tolist() == ids[1, :6].tolist() + [0, 0, 0] and pmask[3].tolist() == [1] * 6 + [0] * 3
    assert (pieces[pmask == 0] == 0).all() and (pmask.sum(1) >= 3).all()
    assert pieces[0].tolist()[-1] == 3 and pmask[0].tolist() == [1] * 9  # an unpadded piece is closed by [SEP]


def test_stage_ends_are_exact_steps():
    from megadna.seqlen import stage_end

    assert stage_end(Stage(34, 0.3), 20) == 6 and stage_end(Stage(34, 0.29), 100) == 29 and stage_end(Stage(34, 0.5), 7) == 4


def test_resume_refuses_another_curriculum_or_basis(tmp_path):
    from megadna.jsonfile import write_json
    from megadna.model import model_config
    from megadna.train.trainer import _check_resumable

    write_json(tmp_path / "config.json", {"train": {"seq_len_schedule": "34:0.3"}})
    meta = {"world_size": 2, "num_workers": 1, "micro_batch": 8, "seed": 0, "samples_consumed": 160, "model": model_config("tiny", 4101, kmer_basis=6).to_dict()}
    same = TrainConfig(seq_len_schedule="34:0.3", kmer_basis=True)
    _check_resumable(meta, same, tmp_path, model_config("tiny", 4101, kmer_basis=6))
    with pytest.raises(InputError, match=r"seq_len_schedule: checkpoint 34:0.3, now 130:0.5"):
        _check_resumable(meta, TrainConfig(seq_len_schedule="130:0.5"), tmp_path, model_config("tiny", 4101, kmer_basis=6))
    with pytest.raises(InputError, match=r"kmer_basis \(k\): checkpoint 6, now 0"):
        _check_resumable(meta, same, tmp_path, model_config("tiny", 4101))
