"""What a dataset asks the model to predict, and everything that depends on it: how labels are read,
the training loss, how logits become outputs, and the scores.

- classification: one label column of class numbers 0..C-1; softmax; MCC (selects), macro F1, accuracy.
- regression: one label column of real numbers; the head's output in label units; Pearson r
  (selects), Spearman rho, MSE. Correlations x 100 like MCC; MSE in squared label units.
- multilabel: several label columns of 0/1 (any names after `sequence`); a sigmoid per label,
  positive at p >= 0.5; MCC averaged over the labels (selects), macro F1 over the labels, accuracy
  averaged over the labels, and each label's MCC (`mcc_per_label`).

`detect` decides from the header and train's labels where that is unambiguous: several label columns
are multilabel; one column of integers is classification; one column with any non-integer number is
regression. A regression target that happens to be integer needs `--problem regression`.
"""

from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F

from megadna.errors import InputError

PROBLEMS = ("classification", "regression", "multilabel")
METRICS = {"classification": ("mcc", "f1", "accuracy"), "regression": ("pearson", "spearman", "mse"),
           "multilabel": ("mcc", "f1", "accuracy")}
PRIMARY = {"classification": "mcc", "regression": "pearson", "multilabel": "mcc"}  # chosen on dev; higher is better
METRIC_NAMES = {"mcc": "MCC", "f1": "F1", "accuracy": "accuracy", "pearson": "Pearson r", "spearman": "Spearman rho", "mse": "MSE"}

_CLASS = re.compile(r"[0-9]+")  # ASCII only: \d, str.isdigit and int() also accept other scripts' digits
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")  # ASCII only, as float() is not
_MAX_CLASS_DIGITS = 9  # a class number, not an id: also keeps labels inside int64


def detect(n_label_columns: int, train_cells: list[str]) -> str:
    """The problem of a dataset from its label columns and train.csv's (first column's) label texts."""
    if n_label_columns > 1:
        return "multilabel"
    if all(_CLASS.fullmatch(c.strip()) for c in train_cells):
        return "classification"
    # Regression only when every label reads as a number: a stray non-number stays a classification error.
    return "regression" if all(_NUMBER.fullmatch(c.strip()) for c in train_cells) else "classification"


def parse(problem: str, cells: list[str], place: str):
    """One row's label(s) from their text; a bad value is an InputError naming `place` (file and line)."""
    if problem == "multilabel":
        if len(cells) < 2:
            raise InputError(f"{place}: a multilabel dataset has one 0/1 column per label after 'sequence' (at least 2)")
        bad = next((c for c in cells if c.strip() not in ("0", "1")), None)
        if bad is not None:
            raise InputError(f"{place}: label {bad.strip()!r} is not 0 or 1 (a multilabel dataset has one 0/1 column per label)")
        return [float(c) for c in cells]
    if len(cells) != 1:
        raise InputError(f"{place}: {len(cells)} label columns; a {problem} dataset has one ('sequence,label')")
    text = cells[0].strip()
    if problem == "classification":
        if not _CLASS.fullmatch(text):
            raise InputError(f"{place}: label {text!r} is not a non-negative integer (ASCII digits 0-9); "
                             "for real-valued labels use --problem regression")
        if len(text.lstrip("0")) > _MAX_CLASS_DIGITS:
            raise InputError(f"{place}: label {text} is not a class number (labels are 0..C-1 for C classes)")
        return int(text)
    if not _NUMBER.fullmatch(text):
        raise InputError(f"{place}: label {text!r} is not a number (ASCII digits, optional sign, point and exponent)")
    value = float(text)
    if not math.isfinite(value):
        raise InputError(f"{place}: label {text!r} is not a finite number")
    return value


def as_array(problem: str, labels: list) -> np.ndarray:
    if problem == "classification":
        return np.asarray(labels, dtype=np.int64)
    return np.asarray(labels, dtype=np.float32)


def loss_sum(problem: str, logits: torch.Tensor, labels: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    """The loss summed over the rows. Regression: squared error in units of the train labels' standard
    deviation (`scale`), so the loss reads the same whatever the labels' units."""
    if problem == "classification":
        return F.cross_entropy(logits, labels, reduction="sum")
    if problem == "regression":
        err = (logits.squeeze(-1) - labels) / (scale.squeeze() if scale is not None else 1.0)
        return (err**2).sum()
    return F.binary_cross_entropy_with_logits(logits, labels, reduction="sum") / labels.shape[1]


def outputs(problem: str, logits: torch.Tensor) -> np.ndarray:
    """Class probabilities [n, C] / predicted values [n, 1] / label probabilities [n, L], fp32."""
    if problem == "classification":
        return F.softmax(logits, dim=-1).numpy()
    if problem == "regression":
        return logits.numpy()
    return torch.sigmoid(logits).numpy()


def predictions(problem: str, out: np.ndarray) -> np.ndarray:
    """The predicted class / value / 0-1 label vector of each row, from `outputs`."""
    if problem == "classification":
        return out.argmax(1)
    if problem == "regression":
        return out[:, 0]
    return (out >= 0.5).astype(np.int64)


def class_scores(labels: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """MCC, macro F1 and accuracy of predicted classes, x 100 (the paper's scale), from scikit-learn."""
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    return {"mcc": 100.0 * float(matthews_corrcoef(labels, pred)),
            "f1": 100.0 * float(f1_score(labels, pred, average="macro", zero_division=0)),
            "accuracy": 100.0 * float(accuracy_score(labels, pred))}


def scores(problem: str, labels: np.ndarray, out: np.ndarray) -> dict:
    """The problem's metrics (x 100 except MSE) of `outputs` against the labels, from scikit-learn/scipy."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    pred = predictions(problem, out)
    if problem == "classification":
        return class_scores(labels, pred)
    if problem == "regression":
        from scipy.stats import spearmanr

        y = np.asarray(labels, dtype=np.float64)
        p = pred.astype(np.float64)
        constant = np.ptp(p) == 0 or np.ptp(y) == 0  # a correlation is undefined: scored 0, as MCC is
        pearson = 0.0 if constant else float(np.corrcoef(y, p)[0, 1])
        spearman = 0.0 if constant else float(spearmanr(y, p).statistic)
        return {"pearson": 100.0 * pearson, "spearman": 100.0 * spearman, "mse": float(np.mean((p - y) ** 2))}
    y = np.asarray(labels).astype(np.int64)
    per_label = [100.0 * float(matthews_corrcoef(y[:, j], pred[:, j])) for j in range(y.shape[1])]
    return {"mcc": float(np.mean(per_label)),
            "f1": 100.0 * float(f1_score(y, pred, average="macro", zero_division=0)),
            "accuracy": 100.0 * float(np.mean(y == pred)), "mcc_per_label": per_label}


def check_train_labels(problem: str, labels: np.ndarray, names: list[str], path) -> None:
    """A regression target or a multilabel column that is constant in train cannot be learned or scored."""
    if problem == "regression" and np.ptp(labels) == 0:
        raise InputError(f"{path}: every label is {labels[0]:g}; a regression task needs varying labels")
    if problem == "multilabel":
        for j, name in enumerate(names):
            if np.ptp(labels[:, j]) == 0:
                raise InputError(f"{path}: column {name!r} is {int(labels[0, j])} in every row; each label needs both 0 and 1 in train")
