"""What `megadna embed`, `predict` and `score-variants` share: reading the user's sequences and
tables, the model and its device, batches in length order, and outputs that appear whole or not at all.

Sequences are validated with the FASTA reader's alphabet (A, C, G, T, N and the IUPAC codes R Y K M S
W B D H V, any case) and then normalised by `codes.normalize`, the tokenizers' own mapping: upper
case, every IUPAC code to N. A FASTA file goes through `megadna.data.genome.read_fasta`, which does
the same while it reads. So a sequence reaches the model exactly as a pre-training window would.
"""

from __future__ import annotations

import csv
import io
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from megadna.data.genome import NUCLEOTIDE_CODES, read_fasta  # NUCLEOTIDE_CODES: the one alphabet every megadna reader accepts
from megadna.errors import InputError, where
from megadna.eval.data import read_utf8
from megadna.tokenizers.base import pack_rows
from megadna.tokenizers.codes import normalize

PRECISIONS = ("auto", "fp32", "bf16")  # auto: bf16 on a GPU that has it, fp32 on a CPU


@dataclass
class RunOptions:
    """The flags every command on a trained model shares (embed, predict, score-variants); each
    command's config extends it and calls `check_run_options` in its __post_init__."""

    batch_size: int = field(default=32, metadata={"help": "model inputs (windows) per forward pass"})
    device: str = field(default="auto", metadata={"help": "auto (CUDA when available) | cpu | cuda | cuda:N"})
    precision: str = field(default="auto", metadata={"help": "auto (bf16 on a GPU with bf16, else fp32) | fp32 | bf16"})
    overwrite: bool = field(default=False, metadata={"help": "replace the output file(s) if they exist"})
    progress: bool = field(default=True, metadata={"help": "tqdm progress bar on stderr"})

    def check_run_options(self) -> None:
        if self.precision not in PRECISIONS:
            raise InputError(f"--precision {self.precision!r}: choose one of {', '.join(PRECISIONS)}")
        if self.batch_size < 1:
            raise InputError(f"--batch_size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class SeqRecord:
    id: str  # FASTA record name, the CSV's id/name column, or the row number (0-based, as in the output)
    seq: str  # upper-case A/C/G/T/N
    place: str  # file and record or line, for error messages


@dataclass
class Table:
    """A CSV file read whole: every row has as many fields as the header."""

    path: Path
    header: list[str]  # as written
    rows: list[list[str]]
    lines: list[int]  # the file line of each row (the header is line 1)
    columns: dict[str, int]  # lower-case column name -> field index

    def place(self, i: int) -> str:
        return where(self.path, line=self.lines[i])

    def value(self, i: int, column: str) -> str:
        return self.rows[i][self.columns[column]].strip()


def read_table(path, required: Sequence[str], expected: str) -> Table:
    """A CSV with a header holding at least the `required` columns (names matched without case).
    `expected` describes the accepted layouts for the error messages. Errors name the file and line."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    reader = csv.reader(io.StringIO(read_utf8(path), newline=""))
    rows, lines = [], []
    try:
        header = next(reader, None)
        if header is None:
            raise InputError(f"{where(path, line=1)}: the file is empty; expected a header ({expected})")
        names = [h.strip().lstrip("\ufeff").lower() for h in header]
        header = [h.strip().lstrip("\ufeff") for h in header]
        seen = set()
        for name in names:
            if name in seen:
                raise InputError(f"{where(path, line=1)}: column {name!r} appears twice in the header")
            seen.add(name)
        missing = [c for c in required if c not in seen]
        if missing:
            raise InputError(f"{where(path, line=1)}: no {', '.join(repr(m) for m in missing)} column "
                             f"(the header is {','.join(header)!r}); expected {expected}")
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                raise InputError(f"{where(path, line=line)}: empty row")
            if len(row) != len(header):
                raise InputError(f"{where(path, line=line)}: {len(row)} fields, but the header has {len(header)}")
            rows.append(row)
            lines.append(line)
    except csv.Error as e:
        raise InputError(f"{where(path, line=reader.line_num)}: malformed CSV: {e}") from None
    if not rows:
        raise InputError(f"{path}: no rows after the header")
    return Table(path, header, rows, lines, {n: i for i, n in enumerate(names)})


def check_dna(text: str, place: str) -> str:
    """`text` as the tokenizers see it (upper case, IUPAC codes as N), after checking that it holds
    only nucleotide codes; an empty sequence or another letter is an InputError naming `place`."""
    data = text.strip().encode("ascii", "replace")  # a non-ASCII character becomes '?', which is refused
    if not data:
        raise InputError(f"{place}: empty sequence")
    bad = data.translate(None, NUCLEOTIDE_CODES)
    if bad:
        column = data.index(bad[:1]) + 1
        raise InputError(f"{place}: {text.strip()[column - 1]!r} at base {column} is not a nucleotide code "
                         "(A, C, G, T, N or IUPAC R Y K M S W B D H V, any case)")
    return normalize(data)


def is_csv(path) -> bool:
    """CSV by name (.csv); anything else is read as FASTA, plain or gzipped."""
    return Path(path).suffix.lower() == ".csv"


def read_sequences(path) -> list[SeqRecord]:
    """The sequences of a FASTA file (plain or gzipped) or of a CSV with a `sequence` column (ids from
    an `id` or `name` column, else the row number, 0-based). Errors name the file and record or line."""
    if not is_csv(path):
        return [SeqRecord(c.name, c.seq.decode("ascii"), where(path, record=c.name)) for c in read_fasta(path)]
    table = read_table(path, ["sequence"], "a 'sequence' column, and optionally 'id' or 'name'")
    id_column = next((c for c in ("id", "name") if c in table.columns), None)
    out = []
    for i in range(len(table.rows)):
        place = table.place(i)
        ident = table.value(i, id_column) if id_column else str(i)
        out.append(SeqRecord(ident, check_dna(table.value(i, "sequence"), place), place))
    return out


def length_sorted_batches(lengths: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Row indices in batches of similar length (little padding), longest first: if a batch does not
    fit in memory, the first one says so."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def model_inputs(rows: Sequence[np.ndarray], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """[CLS] tokens [SEP] [PAD]... (the tokenizers' own packing), as wide as the longest row; on device."""
    packed = pack_rows(rows, max(len(r) for r in rows) + 2)
    return (torch.from_numpy(packed["input_ids"]).to(device, non_blocking=True),
            torch.from_numpy(packed["attention_mask"]).to(device, non_blocking=True))


def progress_bar(total: int, desc: str, unit: str, enabled: bool):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, unit=unit, disable=not enabled, dynamic_ncols=True, file=sys.stderr)


class Outputs:
    """Files written under temporary names beside their targets and renamed into place by `commit`;
    on any error the temporary files are removed, so no half-written output is ever left. Targets
    that exist are refused up front unless `overwrite`, and an input file never, whatever `overwrite`."""

    def __init__(self, paths: Sequence[Path], overwrite: bool, inputs: Sequence[str | Path] = ()):
        self.paths = [Path(p) for p in paths]
        sources = {Path(i).resolve() for i in inputs if i}
        for p in self.paths:
            if p.resolve() in sources:
                raise InputError(f"{p}: is also an input; choose another output name")
            if p.exists() and not overwrite:
                raise InputError(f"{p}: already exists; pass --overwrite to replace it")
            if p.is_dir():
                raise InputError(f"{p}: is a directory")
            if not p.parent.is_dir():
                raise InputError(f"{p.parent}: no such directory for the output {p.name}")

    def tmp(self, path: Path) -> Path:
        path = Path(path)
        return path.with_name(f".{path.name}.partial-{os.getpid()}")

    def commit(self) -> None:
        for p in self.paths:
            os.replace(self.tmp(p), p)

    def __enter__(self) -> "Outputs":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            for p in self.paths:
                self.tmp(p).unlink(missing_ok=True)
