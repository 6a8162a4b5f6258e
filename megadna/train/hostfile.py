"""DeepSpeed hostfiles: parse strictly, validate, and optionally check that every host answers.

A hostfile lists one node per line, in node-rank order:

    # comment
    worker-0 slots=8     # node rank 0: global ranks 0-7 (the first host is the master)
    worker-1 slots=8     # node rank 1: global ranks 8-15

DeepSpeed's own parser accepts `slots=0` (a node with no ranks, so a smaller world than intended),
trailing garbage after the slot count, and reports a bad line without its number. Launching a
multi-node job only to have it hang at rendezvous costs minutes per try, so the launcher scripts run
this check first (`tools/check_hostfile.py`).
"""

from __future__ import annotations

import re
import shutil
import socket
import subprocess
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from pathlib import Path

from megadna.errors import InputError, where

# A host name or IPv4/IPv6 literal. DeepSpeed's --include/--exclude syntax uses ':' and '@', and pdsh
# reads ',' as a list separator, so user@host or a,b in the hostfile can only go wrong later.
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]*")
_LINE = re.compile(r"(?P<host>\S+)\s+slots=(?P<slots>\S+)")


@dataclass(frozen=True)
class Host:
    name: str
    slots: int
    line: int  # 1-based line number in the hostfile, for error messages


def parse_hostfile(path: str | Path) -> list[Host]:
    """The hosts of a DeepSpeed hostfile in node-rank order. Raises InputError naming file and line."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise InputError(f"{path}: no such hostfile") from None
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (a hostfile holds lines 'host slots=N')") from None
    hosts: list[Host] = []
    seen: dict[str, int] = {}
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        m = _LINE.fullmatch(line)
        if not m:
            raise InputError(f"{where(path, lineno)}: {raw.strip()!r} is not 'host slots=N' (one host per line, e.g. 'worker-0 slots=8')")
        name, slots_text = m["host"], m["slots"]
        if not _HOST.fullmatch(name):
            raise InputError(f"{where(path, lineno)}: {name!r} is not a host name or IP address (no user@, commas or slot lists)")
        try:
            slots = int(slots_text)
        except ValueError:
            raise InputError(f"{where(path, lineno)}: slots={slots_text!r} is not a whole number (ranks on this node, usually its GPU count)") from None
        if slots < 1:
            raise InputError(f"{where(path, lineno)}: slots={slots} for {name}: a node needs at least one slot; remove the line to leave the node out")
        key = name.lower()  # host names are case-insensitive
        if key in seen:
            raise InputError(f"{where(path, lineno)}: host {name} is listed twice (first on line {seen[key]}); give each node one line with its total slots")
        seen[key] = lineno
        hosts.append(Host(name, slots, lineno))
    if not hosts:
        raise InputError(f"{path}: no hosts (the file is empty or only comments); write one line 'host slots=N' per node")
    return hosts


def check_node_rank(path: str | Path, hosts: list[Host], node_rank: int) -> Host:
    """The host a per-node launcher (`deepspeed --no_ssh --node_rank N`) will act as."""
    if not 0 <= node_rank < len(hosts):
        raise InputError(f"{path}: node rank {node_rank} is out of range: the hostfile lists {len(hosts)} node(s), ranks 0..{len(hosts) - 1}")
    return hosts[node_rank]


def _probe(host: Host, port: int, timeout_s: float, ssh: bool) -> str | None:
    """None if the host answers, else the reason it does not."""
    if ssh:
        cmd = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={max(1, int(timeout_s))}", "-p", str(port), host.name, "true"]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s + 2, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired:
            return f"ssh did not answer within {timeout_s:g} s"
        if r.returncode != 0:
            err = (r.stderr.strip().splitlines() or ["exit status %d" % r.returncode])[-1]
            return f"passwordless ssh failed: {err}"
        return None
    try:
        infos = socket.getaddrinfo(host.name, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        return f"the name does not resolve ({e.strerror})"
    last = None
    for family, kind, proto, _, addr in infos:
        try:
            with socket.socket(family, kind, proto) as s:
                s.settimeout(timeout_s)
                s.connect(addr)
                return None
        except socket.timeout:
            last = f"no answer on TCP port {port} within {timeout_s:g} s (down, or a firewall drops the packets)"
        except OSError as e:
            last = f"TCP port {port}: {e.strerror or e}"
    return last


def check_reachable(path: str | Path, hosts: list[Host], *, port: int = 22, timeout_s: float = 5.0, ssh: bool = False) -> None:
    """Probe every host at once (TCP connect to `port`, or `ssh host true`), each bounded by timeout_s.

    The whole check takes about timeout_s at most, whatever the number of hosts: name resolution,
    which has no timeout of its own in the C library, runs in a thread that is given up on at the limit.
    """
    if ssh and shutil.which("ssh") is None:
        raise InputError("--ssh: no ssh client on this machine")
    failures = []
    pool = ThreadPoolExecutor(max_workers=min(32, len(hosts)))
    try:
        futures = [(h, pool.submit(_probe, h, port, timeout_s, ssh)) for h in hosts]
        for h, fut in futures:
            try:
                reason = fut.result(timeout=timeout_s + (3 if ssh else 1))
            except FutureTimeout:
                reason = f"no answer within {timeout_s:g} s (name resolution or connect hung)"
            if reason:
                failures.append(f"{h.name} ({where(path, h.line)}): {reason}")
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if failures:
        raise InputError(f"{len(failures)} of {len(hosts)} host(s) unreachable:\n  " + "\n  ".join(failures)
                         + "\nCheck the names, that the nodes are up, and that the network between them is open.")


def describe(hosts: list[Host]) -> str:
    """'2 nodes, 16 ranks: node 0 = a (ranks 0-7, master), node 1 = b (ranks 8-15)'."""
    parts, first = [], 0
    for i, h in enumerate(hosts):
        ranks = f"rank {first}" if h.slots == 1 else f"ranks {first}-{first + h.slots - 1}"
        parts.append(f"node {i} = {h.name} ({ranks}{', master' if i == 0 else ''})")
        first += h.slots
    return f"{len(hosts)} node(s), world size {first}: " + "; ".join(parts)
