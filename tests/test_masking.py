"""Masking policies: empirical rates to tight bounds, span geometry on real overlapping 6-mers,
the RandomMask curriculum, specials, determinism."""

import importlib.util
from pathlib import Path

import pytest
import torch

from megadna.errors import InputError
from megadna.masking import (
    MaskingConfig,
    apply_masking,
    centre_probability,
    coverage,
    mask_boundary,
    mask_seed,
    schedule,
    span_mask,
)

K = 6
VOCAB = 4**K + 5
N_SPECIAL, PAD, UNK, CLS, SEP, MASK = 5, 0, 1, 2, 3, 4
TOTAL = 10_000


def _windows(B=256, L=512, seed=0):
    """[CLS] + random k-mer ids + [SEP]: what a pre-training batch looks like to the masker."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(N_SPECIAL, VOCAB, (B, L), generator=g)
    ids[:, 0], ids[:, -1] = CLS, SEP
    return ids


def _mask(ids, cfg, step=0, seed=0, rank=0, micro_step=0, total=TOTAL, k=K):
    return apply_masking(ids, cfg=cfg, k=k, global_step=step, seed=seed, rank=rank, micro_step=micro_step,
                         total_steps=total, vocab_size=VOCAB)


def _runs(row: torch.Tensor):
    """Maximal runs of True in a 1-D bool tensor, as (start, end) inclusive."""
    x = torch.cat([torch.tensor([False]), row, torch.tensor([False])]).int()
    d = x[1:] - x[:-1]
    return list(zip((d == 1).nonzero().flatten().tolist(), ((d == -1).nonzero().flatten() - 1).tolist()))


# --- bert -------------------------------------------------------------------------------------


def test_bert_rate_and_80_10_10():
    ids = _windows()
    out, labels, stats = _mask(ids, MaskingConfig(policy="bert"))
    masked = labels != -100
    maskable = ids >= N_SPECIAL
    rate = masked.sum() / maskable.sum()
    assert abs(rate.item() - 0.15) < 0.005
    assert torch.equal(stats["mask_ratio"], rate)
    assert torch.equal(labels[masked], ids[masked])

    n = masked.sum().item()
    shown_mask = (out[masked] == MASK).sum().item() / n
    kept = (out[masked] == ids[masked]).sum().item() / n
    random = ((out[masked] != MASK) & (out[masked] != ids[masked])).sum().item() / n
    assert abs(shown_mask - 0.8) < 0.015
    assert abs(kept - 0.1) < 0.015  # includes the 1/4096 random draws that hit the same id
    assert abs(random - 0.1) < 0.015
    assert (out[masked & (out != MASK)] >= N_SPECIAL).all()  # random replacements are never special
    assert torch.equal(out[~masked], ids[~masked])  # unmasked tokens are untouched


# --- span geometry ----------------------------------------------------------------------------


def _span_mask_reference(centres, lengths, maskable):
    B, L = centres.shape
    out = torch.zeros(B, L, dtype=torch.bool)
    for b in range(B):
        for c in range(L):
            if not (centres[b, c] and maskable[b, c]):
                continue
            m = int(lengths[b, c])
            for t in range(c, c - (m + 1) // 2, -1):  # leftwards from the centre, stopping at a barrier
                if t < 0 or not maskable[b, t]:
                    break
                out[b, t] = True
            for t in range(c, c + m // 2 + 1):
                if t >= L or not maskable[b, t]:
                    break
                out[b, t] = True
    return out


def test_span_mask_places_spans_as_documented():
    L = 24
    maskable = torch.ones(1, L, dtype=torch.bool)
    centre = torch.zeros(1, L, dtype=torch.bool)
    centre[0, 10] = True
    # even m: [c - m/2 + 1, c + m/2]; odd m: [c - (m-1)/2, c + (m-1)/2]
    assert span_mask(centre, 6, maskable)[0].nonzero().flatten().tolist() == list(range(8, 14))
    assert span_mask(centre, 5, maskable)[0].nonzero().flatten().tolist() == list(range(8, 13))
    assert span_mask(centre, 1, maskable)[0].nonzero().flatten().tolist() == [10]
    # A [SEP] at 12 clips the span; it never reaches past it.
    maskable[0, 12] = False
    assert span_mask(centre, 6, maskable)[0].nonzero().flatten().tolist() == [8, 9, 10, 11]


def test_span_mask_matches_a_plain_loop():
    g = torch.Generator().manual_seed(0)
    for _ in range(40):
        B, L, max_len = 3, int(torch.randint(1, 40, (1,), generator=g)), int(torch.randint(1, 15, (1,), generator=g))
        centres = torch.rand(B, L, generator=g) < 0.15
        maskable = torch.rand(B, L, generator=g) < 0.85
        lengths = torch.randint(1, max_len + 1, (B, L), generator=g)
        got = span_mask(centres, lengths, maskable, max_length=max_len)
        assert torch.equal(got, _span_mask_reference(centres, lengths, maskable))


def _overlapping_kmer_ids(bases: torch.Tensor, k=K) -> torch.Tensor:
    """Real overlapping k-mer ids (A,C,G,T = 0..3, id = n_special + base-4 number)."""
    weights = 4 ** torch.arange(k - 1, -1, -1)
    windows = bases.unfold(1, k, 1)  # [B, n_kmers, k]
    return N_SPECIAL + (windows * weights).sum(-1)


def _decode_kmer(ids: torch.Tensor, k=K) -> torch.Tensor:
    code = ids - N_SPECIAL
    return torch.stack([(code // 4**(k - 1 - i)) % 4 for i in range(k)], dim=-1)


def test_dnabert_isolated_span_hides_exactly_one_base():
    B, n_bases = 64, 517
    g = torch.Generator().manual_seed(7)
    bases = torch.randint(0, 4, (B, n_bases), generator=g)
    kmers = _overlapping_kmer_ids(bases)  # [B, 512]
    n = kmers.shape[1]
    ids = torch.cat([torch.full((B, 1), CLS), kmers, torch.full((B, 1), SEP)], dim=1)
    out, labels, _ = _mask(ids, MaskingConfig(policy="dnabert", centre_probability=0.01))
    hidden_tokens = (labels != -100)[:, 1:-1]

    # What the model can still read: every base inside some visible token, decoded from its id.
    visible = ~hidden_tokens
    decoded = _decode_kmer(out[:, 1:-1])  # [B, n, k]; visible tokens are the original k-mers
    pos = torch.arange(n)[:, None] + torch.arange(K)  # base index of each k-mer letter
    assert torch.equal(decoded[visible], bases[:, pos][visible])
    known = torch.zeros(B, n_bases, dtype=torch.bool)
    for i in range(K):  # base j is known when a visible token covers it
        known[:, i:i + n] |= visible

    lengths = []
    for b in range(B):
        for s, e in _runs(hidden_tokens[b]):
            if s == 0 or e == n - 1:
                continue  # touches [CLS]/[SEP]: clipped, and end bases are covered by fewer tokens
            m = e - s + 1
            lengths.append(m)
            assert m >= K  # a span never shrinks away from a barrier
            # A run of m tokens hides m - k + 1 bases; an isolated span (m == k) exactly one.
            assert (~known[b, s:e + K]).sum().item() == m - K + 1
    assert len(lengths) > 200
    assert sum(m == K for m in lengths) / len(lengths) > 0.9  # spans are exactly k; longer = overlaps


# --- RandomMask curriculum --------------------------------------------------------------------


def test_randommask_boundary_schedule():
    cfg = MaskingConfig(policy="randommask")  # B_max = 2k, 5 phases of 2000 steps
    steps = range(0, 12_000, 50)
    bounds = [mask_boundary(cfg, s, K, TOTAL) for s in steps]
    assert bounds[0] == K
    assert all(a <= b for a, b in zip(bounds, bounds[1:]))  # monotone
    assert [mask_boundary(cfg, s, K, TOTAL) for s in (0, 1999, 2000, 4000, 6000, 8000, 9999, 50_000)] == \
        [6, 6, 8, 9, 11, 12, 12, 12]  # 6 + 6 * phase / 4, rounded half up
    assert mask_boundary(MaskingConfig(max_boundary=20, phase_steps=10), 35, K, None) == 17  # phase 3: 16.5 up
    assert mask_boundary(MaskingConfig(phases=1), 0, K, TOTAL) == 2 * K
    assert mask_boundary(MaskingConfig(policy="dnabert"), 9000, K, TOTAL) == K
    with pytest.raises(InputError, match="max_boundary 4 is below k = 6"):
        mask_boundary(MaskingConfig(max_boundary=4), 0, K, TOTAL)
    with pytest.raises(InputError, match="total_steps"):
        mask_boundary(cfg, 0, K, None)


@pytest.mark.parametrize("step", [0, 4000, 8000])
def test_randommask_span_lengths_within_boundary(step):
    cfg = MaskingConfig(policy="randommask", centre_probability=0.004, rescale=False)
    ids = _windows(B=128)
    _, labels, stats = _mask(ids, cfg, step=step)
    bound = stats["mask_boundary"]
    lengths = [e - s + 1 for row in (labels != -100)[:, 1:-1] for s, e in _runs(row)
               if s > 0 and e < 509]
    assert len(lengths) > 150
    assert min(lengths) >= K
    # Longer runs than the boundary only come from two spans overlapping (rare at this p).
    assert sum(m <= bound for m in lengths) / len(lengths) > 0.95
    assert set(range(K, bound + 1)) <= set(lengths)  # every length in [k, B] is drawn


def test_randommask_ratio_holds_with_rescale_and_grows_without():
    ids = _windows()
    for step in (0, 4000, 8000):  # B = 6, 9, 12
        ratios = [_mask(ids, MaskingConfig(), step=step, micro_step=m)[2]["mask_ratio"] for m in range(4)]
        assert abs(torch.stack(ratios).mean().item() - 0.15) < 0.005, step
    fixed = MaskingConfig(rescale=False)
    first = _mask(ids, fixed, step=0)[2]["mask_ratio"].item()
    last = _mask(ids, fixed, step=9000)[2]["mask_ratio"].item()
    assert abs(first - 0.15) < 0.01 and last > 0.19  # same p, longer spans: more masking


def test_dnabert_rate_and_derived_centre_probability():
    p = centre_probability(MaskingConfig(policy="dnabert"), K, K)
    assert p == pytest.approx(1 - 0.85 ** (1 / K))  # one span length: 1 - (1 - p)^k = 15%
    assert coverage(p, K, K) == pytest.approx(0.15)
    ids = _windows()
    ratios = [_mask(ids, MaskingConfig(policy="dnabert"), micro_step=m)[2]["mask_ratio"] for m in range(4)]
    assert abs(torch.stack(ratios).mean().item() - 0.15) < 0.005


# --- specials, determinism, device ------------------------------------------------------------


@pytest.mark.parametrize("policy", ["bert", "dnabert", "randommask"])
def test_specials_and_padding_never_masked(policy):
    ids = _windows(B=64)
    ids[:, 300] = SEP  # two segments
    ids[::3, 100:110] = UNK
    ids[::2, 400:] = PAD
    ids[::2, 399] = SEP
    special = ids < N_SPECIAL
    out, labels, _ = _mask(ids, MaskingConfig(policy=policy, mask_ratio=0.5), step=9000)
    assert (labels[special] == -100).all()
    assert torch.equal(out[special], ids[special])
    assert (labels[~special] != -100).any()


def test_same_inputs_same_mask_and_every_key_matters():
    ids = _windows(B=8)
    cfg = MaskingConfig()
    base = dict(step=4000, seed=1, rank=2, micro_step=3)
    a = _mask(ids, cfg, **base)
    b = _mask(ids.clone(), cfg, **base)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    for key, value in [("step", 4001), ("seed", 2), ("rank", 3), ("micro_step", 0)]:
        c = _mask(ids, cfg, **{**base, key: value})
        assert not torch.equal(a[1], c[1]), key
    assert mask_seed(0, 1, 2, 0) != mask_seed(0, 2, 1, 0)
    assert 0 <= mask_seed(2**70, -1, 5, 0) < 2**63


def test_outputs_stay_on_the_input_device():
    ids = _windows(B=4)
    out, labels, stats = _mask(ids, MaskingConfig())
    assert out.device == labels.device == stats["mask_ratio"].device == ids.device
    assert out.dtype == ids.dtype and labels.dtype == ids.dtype
    assert stats["mask_ratio"].dim() == 0 and isinstance(stats["mask_boundary"], int)


@pytest.mark.gpu
def test_masking_makes_no_host_sync_on_cuda():
    ids = _windows().cuda()
    _mask(ids, MaskingConfig(), step=8000)  # warm up: first calls may sync to set things up
    torch.cuda.set_sync_debug_mode("error")
    try:
        out, labels, stats = _mask(ids, MaskingConfig(), step=8000)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    cpu = _mask(ids.cpu(), MaskingConfig(), step=8000)
    assert out.is_cuda and abs(stats["mask_ratio"].item() - cpu[2]["mask_ratio"].item()) < 0.01


def test_config_validation():
    for bad in (dict(policy="span"), dict(mask_ratio=0.0), dict(mask_ratio=1.2),
                dict(centre_probability=1.0), dict(phases=0), dict(max_boundary=0),
                dict(replace_mask=0.95, replace_random=0.1), dict(phase_steps=0)):
        with pytest.raises(InputError):
            MaskingConfig(**bad)
    with pytest.raises(InputError, match="k must be a positive integer"):
        MaskingConfig().check_k(0)
    assert MaskingConfig().to_dict()["policy"] == "randommask"


# --- schedule and plot ------------------------------------------------------------------------


def test_schedule_reports_the_curriculum():
    s = schedule(MaskingConfig(), K, TOTAL, n_points=11, batch_size=16, seq_len=256)
    assert s["step"][0] == 0 and {2000, 4000, 6000, 8000} <= set(s["step"])
    assert s["mask_boundary"][0] == K and s["mask_boundary"][-1] == 2 * K
    assert all(abs(r - 0.15) < 1e-9 for r in s["expected_mask_ratio"])
    assert all(abs(r - 0.15) < 0.03 for r in s["realised_mask_ratio"])
    ps = s["centre_probability"]
    assert all(a >= b for a, b in zip(ps, ps[1:]))  # longer spans, fewer centres


def test_plot_tool_writes_a_png(tmp_path):
    pytest.importorskip("matplotlib")
    path = Path(__file__).resolve().parents[1] / "tools" / "plot_masking.py"
    spec = importlib.util.spec_from_file_location("plot_masking", path)
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "schedule.png"
    tool.main(["--policy", "randommask", "--k", "6", "--total_steps", "10000", "--out", str(out),
               "--n_points", "6", "--batch_size", "4", "--seq_len", "128"])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    three = tmp_path / "with_seq_len.png"
    tool.main(["--k", "6", "--total_steps", "100", "--out", str(three), "--n_points", "6", "--batch_size", "4", "--seq_len", "128",
               "--seq_len_schedule", "34:0.3,66:0.6"])
    assert three.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
