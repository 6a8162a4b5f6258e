"""Shard sets that live behind a URL instead of a shared filesystem (`--data URL`).

    --data https://example.org/shards/hg38          # base URL: manifest.json, train/..., val/... under it
    --data "pipe:aws s3 cp s3://bucket/hg38/{} -"    # a command that writes one file to stdout; {} = its path
    --data "pipe:gcloud storage cat gs://bucket/hg38/{}"

A location is either a local directory (a Path) or one of these URL forms (a str). Every file of the
set is addressed by its path relative to the set (`manifest.json`, `train/shard-00000.tar.gz`):
`locate(base, rel)` joins them. A remote file is fetched whole into memory (a shard is a few MB),
then checked against the manifest (size and sha256) exactly as a local one before a byte is decoded.

Failures are bounded and named: a fetch that errors, stalls past the timeout or ends short is retried
(`MEGADNA_FETCH_RETRIES`, default 3, with 1, 2, 4 ... s pauses), then raises an InputError naming the
URL or command; one attempt may take at most `MEGADNA_FETCH_TIMEOUT_S` (default 60 s) for the whole
file (http: every socket operation and the whole body; pipe: the command, killed with its process
group when over). Names from the manifest are quoted (shell for pipe:, URL for http).
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from http.client import HTTPException
from pathlib import Path

from megadna.errors import InputError

URL_PREFIXES = ("http://", "https://", "pipe:")


def is_url(location) -> bool:
    return isinstance(location, str) and location.startswith(URL_PREFIXES)


def as_location(spec: str | Path) -> str | Path:
    """A URL form stays a str; anything else is a local directory."""
    return spec if is_url(spec) else Path(spec)


def locate(base: str | Path, rel: str) -> str | Path:
    """The file `rel` (a path relative to the shard set) under `base`."""
    if not is_url(base):
        return Path(base) / rel
    if base.startswith("pipe:"):
        if "{}" not in base:
            raise InputError(f"--data {base!r}: a pipe: location needs {{}} where each file's path goes "
                             "(e.g. 'pipe:aws s3 cp s3://bucket/shards/{} -')")
        return base.replace("{}", shlex.quote(rel))  # a name from a manifest never becomes shell syntax
    return base.rstrip("/") + "/" + urllib.parse.quote(rel)


def _policy() -> tuple[float, int]:
    try:
        timeout = float(os.environ.get("MEGADNA_FETCH_TIMEOUT_S", "60"))
        retries = int(os.environ.get("MEGADNA_FETCH_RETRIES", "3"))
    except ValueError:
        raise InputError("MEGADNA_FETCH_TIMEOUT_S must be a number and MEGADNA_FETCH_RETRIES an integer") from None
    return max(timeout, 0.1), max(retries, 0)


def fetch(url: str) -> bytes:
    """The whole file at `url` (an http(s) URL or a pipe: command), retried; an InputError naming it
    when every attempt failed."""
    timeout, retries = _policy()
    last = ""
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(2 ** (attempt - 1), 30))
        try:
            return _pipe(url[len("pipe:"):], timeout) if url.startswith("pipe:") else _http(url, timeout)
        except _NotFound as e:
            raise InputError(f"{url}: {e}") from None  # a missing file does not appear by retrying
        except (OSError, HTTPException, _Short, subprocess.TimeoutExpired) as e:
            last = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
    raise InputError(f"{url}: could not be read after {retries + 1} attempt(s) (timeout {timeout:g} s each): {last}")


class _Short(Exception):
    """The transfer ended before the length the server announced."""


class _NotFound(Exception):
    pass


def _http(url: str, timeout: float) -> bytes:
    """The body, read in chunks under one deadline for the whole file (a server that trickles bytes
    cannot hold a rank longer than the timeout), checked against Content-Length."""
    deadline = time.monotonic() + timeout
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            declared = r.headers.get("Content-Length")
            chunks = []
            while chunk := r.read(1 << 20):
                chunks.append(chunk)
                if time.monotonic() > deadline:
                    raise TimeoutError(f"the transfer took longer than {timeout:g} s")
            data = b"".join(chunks)
    except urllib.error.HTTPError as e:
        if e.code == 404:
            raise _NotFound("HTTP 404: no such file on the server") from None
        raise
    if declared is not None and len(data) != int(declared):
        raise _Short(f"{len(data)} of {declared} bytes arrived (the connection closed early)")
    return data


def _pipe(cmd: str, timeout: float) -> bytes:
    """The command's stdout; on a timeout the whole process group is killed (a pipeline's children too)."""
    p = subprocess.Popen(cmd, shell=True, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
        raise
    if p.returncode != 0:
        lines = err.decode("utf-8", "replace").strip().splitlines()
        raise OSError(f"exit {p.returncode}{': ' + lines[-1] if lines else ''}")
    return out
