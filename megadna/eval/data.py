"""GUE datasets: reading and validating `<task>/<dataset>/{train,dev,test}.csv` (header `sequence,label`),
finding and selecting datasets, seeded subsets, and tokenizing them for fine-tuning.

Every file is validated row by row as it is read: a bad row is an InputError naming file and line.
What the labels are (class numbers, real values, or several 0/1 columns) is the dataset's problem
(megadna.eval.problems: --problem, or read from the CSVs). Class numbers are 0..C-1 in ASCII digits;
C comes from train.csv, where every class must occur, and dev/test may hold only train's classes
(`check_labels`).
"""

from __future__ import annotations

import csv
import dataclasses
import io
import logging
import re
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from megadna.errors import InputError, where
from megadna.eval.config import GUEConfig
from megadna.eval.problems import as_array, check_train_labels, detect
from megadna.eval.problems import parse as parse_label
from megadna.tokenizers import DNATokenizer

log = logging.getLogger(__name__)

SPLITS = ("train", "dev", "test")
_DNA = re.compile(r"[ACGTNacgtn]+")


@dataclass
class Split:
    sequences: list[str]  # upper-case A/C/G/T/N
    labels: np.ndarray  # classification: int64 [n]; regression: float32 [n]; multilabel: float32 0/1 [n, L]
    index: np.ndarray  # int64: row of each sequence in the file (0 = first data row, line 2)
    num_classes: int | None = None  # outputs of the head: C classes, 1 value or L labels (set by load_dataset)
    problem: str = "classification"  # megadna.eval.problems
    label_names: tuple[str, ...] = ("label",)  # the label column(s) of the header

    def __len__(self) -> int:
        return len(self.sequences)


@dataclass
class _Rows:
    """A dataset CSV read and checked row by row, labels still text."""

    path: Path
    label_names: tuple[str, ...]
    sequences: list[str]
    cells: list[list[str]]
    lines: list[int]


def _read_rows(path: Path) -> _Rows:
    """Header `sequence,<label column(s)>`; every sequence A/C/G/T/N. Errors name file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: missing; a GUE dataset folder holds train.csv, dev.csv and test.csv")
    seqs, cells, lines = [], [], []
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""))
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{where(path, line=1)}: the file is empty; expected the header 'sequence,label'")
        names = [h.strip().lstrip("\ufeff") for h in header]
        if len(names) < 2 or names[0].lower() != "sequence" or any(not n for n in names[1:]):
            raise InputError(f"{where(path, line=1)}: header is {','.join(header)!r}, expected 'sequence,label' "
                             "(or 'sequence,<label 1>,<label 2>,...' for a multilabel dataset)")
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                raise InputError(f"{where(path, line=line)}: empty row; every row is '{','.join(names)}'")
            if len(row) != len(names):
                raise InputError(f"{where(path, line=line)}: {len(row)} fields, expected {len(names)} ({','.join(names)})")
            seq = row[0].strip()
            if not _DNA.fullmatch(seq):
                bad = next((c for c in seq if c not in "ACGTNacgtn"), "") if seq else ""
                what = f"non-DNA character {bad!r}" if seq else "an empty sequence"
                raise InputError(f"{where(path, line=line)}: {what}; sequences hold only A, C, G, T, N")
            seqs.append(seq.upper())
            cells.append(row[1:])
            lines.append(line)
    except csv.Error as e:
        raise InputError(f"{where(path, line=reader.line_num)}: malformed CSV: {e}") from None
    if not seqs:
        raise InputError(f"{path}: no rows after the header")
    return _Rows(path, tuple(names[1:]), seqs, cells, lines)


def _to_split(rows: _Rows, problem: str) -> Split:
    if problem != "multilabel" and [n.lower() for n in rows.label_names] != ["label"]:
        raise InputError(f"{where(rows.path, line=1)}: header is 'sequence,{','.join(rows.label_names)}', expected 'sequence,label' "
                         f"for a {problem} dataset")
    labels = [parse_label(problem, c, where(rows.path, line=line)) for c, line in zip(rows.cells, rows.lines)]
    return Split(rows.sequences, as_array(problem, labels), np.arange(len(rows.sequences), dtype=np.int64),
                 problem=problem, label_names=rows.label_names)


def read_split(path: Path, problem: str = "classification") -> Split:
    """A GUE csv (header `sequence,label`; `sequence,<labels...>` for multilabel), validated row by row;
    errors name file and line."""
    return _to_split(_read_rows(path), problem)


def read_utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are an error naming the line and the byte within it."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line_start = data.rfind(b"\n", 0, e.start) + 1
        line = data.count(b"\n", 0, e.start) + 1
        raise InputError(f"{where(path, line=line)}, byte {e.start - line_start + 1}: not UTF-8 text ({e.reason}, "
                         f"byte 0x{data[e.start]:02x}); save the file as UTF-8") from None


def check_labels(splits: dict[str, Split], folder: Path) -> int:
    """The number of classes C, taken from train: train's labels are exactly 0..C-1 (every class present,
    C >= 2) and dev/test hold no class that train lacks. A violation names the file and line."""
    train = splits["train"].labels
    classes = np.unique(train)
    n = len(classes)
    if classes[-1] != n - 1:  # a gap: some class below the largest label never occurs
        missing = int(np.flatnonzero(classes != np.arange(n))[0])
        row = int(np.argmax(train > missing))
        raise InputError(f"{where(folder / 'train.csv', line=row + 2)}: label {train[row]}, but class {missing} never "
                         f"occurs in train.csv; labels must be 0..C-1 with every class present in train")
    if n < 2:
        raise InputError(f"{folder / 'train.csv'}: every row has label {classes[0]}; a classification task needs at least 2 classes")
    for s in SPLITS[1:]:
        unseen = np.flatnonzero(splits[s].labels >= n)
        if unseen.size:
            row = int(unseen[0])
            raise InputError(f"{where(folder / f'{s}.csv', line=row + 2)}: label {splits[s].labels[row]} never occurs in "
                             f"train.csv (classes 0..{n - 1}); every dev/test class must be present in train")
    return n


def gue_root(gue_dir) -> Path:
    """The folder whose children are the tasks: gue_dir itself, or gue_dir/GUE when it holds the GUE folder."""
    root = Path(gue_dir)
    if not root.is_dir():
        raise InputError(f"{root}: no such GUE folder (expected <task>/<dataset>/{{train,dev,test}}.csv under it)")
    if not _dataset_names(root) and (root / "GUE").is_dir():
        return root / "GUE"
    return root


def _dataset_names(root: Path) -> list[str]:
    return sorted(f"{t.name}/{d.name}" for t in root.iterdir() if t.is_dir() for d in t.iterdir()
                  if d.is_dir() and any((d / f"{s}.csv").exists() for s in SPLITS))


def discover_datasets(gue_dir) -> list[str]:
    """Every "task/dataset" with a split file under the GUE folder, sorted."""
    root = gue_root(gue_dir)
    names = _dataset_names(root)
    if not names:
        raise InputError(f"{root}: no GUE datasets found (expected {root}/<task>/<dataset>/train.csv)")
    return names


def select_datasets(gue_dir, wanted: str) -> list[str]:
    """The comma-separated "task/dataset" names in `wanted` (all found when empty), each checked to exist."""
    available = discover_datasets(gue_dir)
    if not wanted.strip():
        return available
    names = [w.strip().strip("/") for w in wanted.split(",") if w.strip()]
    missing = [n for n in names if n not in available]
    if missing:
        raise InputError(f"--datasets: {', '.join(missing)} not found under {gue_dir}; available: {', '.join(available)}")
    return names


def subsample(split: Split, n: int, rng: np.random.Generator) -> Split:
    """n rows chosen at random (kept in file order), or the split itself when n is 0 or >= its size."""
    if not n or n >= len(split):
        return split
    keep = np.sort(rng.choice(len(split), size=n, replace=False))
    return dataclasses.replace(split, sequences=[split.sequences[i] for i in keep], labels=split.labels[keep], index=split.index[keep])


def load_dataset(gue_dir, name: str, cfg: GUEConfig) -> dict[str, Split]:
    """train/dev/test of "task/dataset", each cut to cfg's seeded subset size (0: whole)."""
    folder = gue_root(gue_dir) / name
    rows = {s: _read_rows(folder / f"{s}.csv") for s in SPLITS}
    for s in SPLITS[1:]:
        if rows[s].label_names != rows["train"].label_names:
            raise InputError(f"{where(folder / f'{s}.csv', line=1)}: label columns {','.join(rows[s].label_names)} differ from "
                             f"train.csv's ({','.join(rows['train'].label_names)})")
    problem = cfg.problem if cfg.problem != "auto" else detect(len(rows["train"].label_names), [c[0] for c in rows["train"].cells])
    if cfg.problem == "auto" and problem != "classification":
        log.info("%s: read as a %s dataset (--problem auto; pass --problem to say otherwise)", name, problem)
    splits = {s: _to_split(r, problem) for s, r in rows.items()}
    if problem == "classification":
        num_classes = check_labels(splits, folder)  # on the whole files, before any subset
    else:
        check_train_labels(problem, splits["train"].labels, list(rows["train"].label_names), folder / "train.csv")
        num_classes = 1 if problem == "regression" else len(rows["train"].label_names)
    # Subsets depend on (subsample_seed, dataset, split), not on the fine-tuning seed: every seed sees
    # the same data, so the spread over seeds is the spread of training alone.
    key = zlib.crc32(name.encode())
    # A low-data curve reads the largest subset it needs (all of train when 0 is on it); each point's
    # rows are nested inside that (megadna.eval.task.Task.unit).
    train = 0 if 0 in cfg.train_sizes() else max(cfg.train_sizes())
    sizes = {"train": train, "dev": cfg.max_eval_samples, "test": cfg.max_eval_samples}
    out = {s: subsample(sp, sizes[s], np.random.default_rng([cfg.subsample_seed, key, i])) for i, (s, sp) in enumerate(splits.items())}
    for sp in out.values():
        sp.num_classes = num_classes  # a subset may miss a class; the head still has one output per class
    return out


def token_counts(tokenizer: DNATokenizer, seqs: list[str]) -> np.ndarray:
    """Tokens (without [CLS]/[SEP]) per sequence."""
    out = np.empty(len(seqs), dtype=np.int64)
    for i, s in enumerate(seqs):
        n = tokenizer.num_tokens(len(s)) if "N" not in s else None  # exact for N-free sequences
        out[i] = n if n is not None else len(tokenizer.encode(s))
    return out


@dataclass
class Encoded:
    input_ids: torch.Tensor  # [n, max_tokens] int64
    lengths: torch.Tensor  # [n] real tokens incl. [CLS]/[SEP]
    labels: torch.Tensor  # as Split.labels


def encode_split(tokenizer: DNATokenizer, split: Split, max_tokens: int) -> Encoded:
    """[CLS] tokens [SEP], padded to max_tokens; longer sequences keep their first tokens."""
    ids, masks = [], []
    for start in range(0, len(split), 8192):
        b = tokenizer.encode_batch(split.sequences[start:start + 8192], max_tokens)
        ids.append(b["input_ids"])
        masks.append(b["attention_mask"])
    mask = np.concatenate(masks)
    return Encoded(torch.from_numpy(np.concatenate(ids)), torch.from_numpy(mask.sum(1)), torch.from_numpy(split.labels))


def plan_tokens(tokenizer: DNATokenizer, splits: dict[str, Split], max_positions: int, requested: int, name: str) -> tuple[int, dict]:
    """Tokens per sequence for this dataset, and how many sequences of each split get truncated.

    The rule: input is [CLS] tokens [SEP]. max_tokens is --max_tokens, else the longest sequence's
    token count + 2, capped at the model's positions. A longer sequence keeps its first
    max_tokens - 2 tokens, i.e. its first bases (the left end).
    """
    counts = {s: token_counts(tokenizer, sp.sequences) for s, sp in splits.items()}
    longest = max(int(c.max()) for c in counts.values()) + 2
    if requested > max_positions:
        raise InputError(f"--max_tokens {requested} exceeds the model's {max_positions} positions")
    max_tokens = requested or min(longest, max_positions)
    truncated = {s: int((c > max_tokens - 2).sum()) for s, c in counts.items()}
    if any(truncated.values()):
        detail = ", ".join(f"{n} of {len(splits[s])} {s}" for s, n in truncated.items() if n)
        log.warning("%s: %s sequences are longer than %d tokens and are truncated to their first %d tokens "
                    "(the left end of the sequence is kept)", name, detail, max_tokens - 2, max_tokens - 2)
    return max_tokens, truncated
