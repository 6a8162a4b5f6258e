"""The process group across nodes: a bounded, explained rendezvous, and checks that every rank runs the
same job on the same data with the same weights.

Time limit. `MEGADNA_DIST_TIMEOUT_S` (default 600 s) bounds both the rendezvous and every collective:
a node that never joins, or a peer that stops answering mid-run, ends the job with an error instead of
a hang. It must exceed the longest legitimate wait of one rank for another: a checkpoint save (the
barrier after it waits for the slowest writer), an evaluation, the first step.

How a failure surfaces (measured on the simulated two-node cluster of tests/test_multinode.py):
- a node that never starts: rank 0 names the missing node rank(s) after the time limit; the ranks of
  a node that cannot reach the master say so after about twice the limit (torch's store client
  retries once) (`init`).
- a node whose processes die (crash, OOM kill, SIGKILL): the kernel closes their sockets, so the
  survivors' next gloo collective fails at once with "Connection reset by peer"/"Connection closed"
  and they exit non-zero; no watchdog is needed.
- a node that freezes or drops off the network without closing its sockets: the survivors' pending
  collective times out after `MEGADNA_DIST_TIMEOUT_S` (gloo honours the process-group timeout, once
  `timeout_new_groups` has made it the timeout of DeepSpeed's own groups too).
- NCCL: collectives run asynchronously on the GPU, so a dead peer is seen by the NCCL watchdog only
  after the process-group timeout; with TORCH_NCCL_ASYNC_ERROR_HANDLING=1 (launchers/env.sh) the
  watchdog then aborts the communicators and ends the process, instead of leaving it blocked forever.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import time
from datetime import timedelta
from pathlib import Path

import torch

from megadna.errors import InputError

log = logging.getLogger("megadna.train.distributed")

TIMEOUT_ENV = "MEGADNA_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0

_store = None  # the rendezvous store; rank 0 hosts its server, kept alive with the process group


class ReplicaDivergence(RuntimeError):
    """Data-parallel replicas of the model no longer hold the same weights (a bug or a hardware fault)."""


def timeout_s() -> float:
    """Seconds from MEGADNA_DIST_TIMEOUT_S (default 600): rendezvous and per-collective time limit."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return DEFAULT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        raise InputError(f"{TIMEOUT_ENV}={raw!r} is not a number of seconds") from None
    if not value > 0:
        raise InputError(f"{TIMEOUT_ENV}={raw!r} must be > 0 seconds")
    return value


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        raise InputError(f"environment variable {name}={os.environ[name]!r} is not an integer (set by the launcher)") from None


def _layout() -> dict:
    """Where this process sits, from what DeepSpeed's launcher (or torchrun) exported."""
    return {
        "rank": _env_int("RANK", 0),
        "world_size": _env_int("WORLD_SIZE", 1),
        "local_rank": _env_int("LOCAL_RANK", 0),
        "local_size": _env_int("LOCAL_SIZE", _env_int("LOCAL_WORLD_SIZE", 1)),
        # DeepSpeed's launcher exports the node rank and node count as CROSS_RANK / CROSS_SIZE.
        "node_rank": _env_int("CROSS_RANK", _env_int("GROUP_RANK", 0)),
        "nnodes": _env_int("CROSS_SIZE", 0),
        "host": socket.gethostname(),
    }


def init(timeout: float | None = None) -> None:
    """Join the process group (through DeepSpeed, so its communication backend is used), bounded by
    `timeout` seconds (default: `timeout_s()`), and say which node is missing when it does not form.

    Before DeepSpeed's own env:// rendezvous, every rank posts (rank, node, host) to a key-value store
    at MASTER_ADDR:MASTER_PORT; rank 0 waits for all of them until the deadline and, if some are
    missing, names them to every rank that did join. DeepSpeed's rendezvous then reuses the same store
    server (torch's multi-tenant TCPStore), so no second port is needed.
    """
    global _store
    check_build_locks()
    t = timeout_s() if timeout is None else float(timeout)
    lay = _layout()
    needed = all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    if needed and lay["world_size"] > 1 and not torch.distributed.is_initialized():
        _store = _join(lay, t)
    import deepspeed

    deepspeed.init_distributed(timeout=timedelta(seconds=t))
    timeout_new_groups(t)
    release_shm_names()


STALE_LOCK_S = 15 * 60  # a DeepSpeed op builds in 1-3 min on 2 cores


def build_locks() -> list[Path]:
    """Build locks of DeepSpeed's ops in torch's JIT extension cache, where DeepSpeed compiles them on
    first use (other projects' extensions in the same cache are not ours to judge)."""
    try:
        from deepspeed.ops.op_builder.all_ops import ALL_OPS

        names = {builder.NAME for builder in ALL_OPS.values()}
    except Exception:  # noqa: BLE001 - an op registry that cannot be read: nothing to check against
        return []
    root = os.environ.get("TORCH_EXTENSIONS_DIR")
    if root:
        candidates = Path(root).glob("*/lock")
    else:
        from torch.utils.cpp_extension import get_default_build_root

        candidates = Path(get_default_build_root()).glob("*/*/lock")
    return sorted(p for p in candidates if p.parent.name in names)


def check_build_locks(now: float | None = None) -> None:
    """A process killed while compiling a DeepSpeed op leaves its build lock behind, and every later
    start then waits on it forever without a word. Name such a lock instead."""
    now = time.time() if now is None else now
    for lock in build_locks():
        try:
            age = now - lock.stat().st_mtime
        except OSError:
            continue  # the build finished meanwhile
        if age > STALE_LOCK_S:
            raise InputError(f"{lock}: build lock of DeepSpeed op '{lock.parent.name}', {age / 60:.0f} min old; a process "
                             f"compiling it was killed, and every start would wait on it forever. No build takes that long: "
                             f"delete the file and start again (the op is rebuilt once).")


# DeepSpeed's CPU backend gives each rank a 66 MB shared-memory allreduce buffer, named
# deepspeed_allreduce_buffer_{uid}_{MASTER_ADDR}_{MASTER_PORT}_{rank} (ops/csrc/cpu/comm/shm.cpp), and
# never unlinks it: every CPU run left 2 x 66 MB in /dev/shm until reboot (measured: 20 GB after a day
# of test runs, which starved a 24 GB machine until builds and tests crawled).
SHM_DIR = Path("/dev/shm")


def shm_buffer_path(rank: int) -> Path:
    return SHM_DIR / f"deepspeed_allreduce_buffer_{os.getuid()}_{os.environ.get('MASTER_ADDR', '')}_{os.environ.get('MASTER_PORT', '')}_{rank}"


def release_shm_names() -> None:
    """Unlink this rank's allreduce buffer name once every rank has mapped every peer's buffer (each
    rank maps its peers inside init_distributed, so a barrier after it suffices). The mappings stay
    valid until the processes exit; only the name goes, so nothing is left behind after the run."""
    if not torch.distributed.is_initialized():
        return
    from deepspeed.accelerator import get_accelerator

    if get_accelerator().device_name() != "cpu":
        return  # only DeepSpeed's CPU backend makes these buffers
    # Every rank takes part, whatever it finds: a leftover file of a killed run (same uid, address and
    # port) may exist for some ranks only, and a barrier that some ranks skip would hang the others.
    if torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
    shm_buffer_path(torch.distributed.get_rank()).unlink(missing_ok=True)


def timeout_new_groups(t: float) -> None:
    """Make `t` seconds the timeout of every process group created from now on (see below)."""
    # DeepSpeed makes its data-parallel group (a clone of the world group) with new_group(), which
    # takes torch's default timeout (30 min gloo, 10 min NCCL), not the one given to
    # init_distributed: ZeRO's gradient reductions, where a frozen peer is met, ignored the limit
    # (measured: still blocked after 120 s with a 20 s limit; huggingface/transformers#32036). torch
    # reads these module defaults whenever a group is created, so set them before deepspeed.initialize.
    from torch.distributed import distributed_c10d as c10d

    c10d.default_pg_timeout = timedelta(seconds=t)
    if getattr(c10d, "default_pg_nccl_timeout", None) is not None:
        c10d.default_pg_nccl_timeout = timedelta(seconds=t)


def _where(lay: dict) -> str:
    nodes = f" of {lay['nnodes']}" if lay["nnodes"] else ""
    return f"rank {lay['rank']} (node rank {lay['node_rank']}{nodes}, host {lay['host']})"


def _join(lay: dict, t: float):
    addr, port = os.environ["MASTER_ADDR"], _env_int("MASTER_PORT", 29500)
    rank, world = lay["rank"], lay["world_size"]
    hint = f"check the hostfile, MASTER_ADDR={addr}, MASTER_PORT={port} and the firewall between the nodes ({TIMEOUT_ENV}={t:g})"
    t0 = time.monotonic()
    try:
        store = torch.distributed.TCPStore(addr, port, None, rank == 0, timedelta(seconds=t), wait_for_workers=False, multi_tenant=True)
    except (RuntimeError, OSError) as e:  # DistNetworkError / DistStoreError are RuntimeErrors
        text = str(e)
        if rank == 0 and ("EADDRINUSE" in text or "in use" in text):
            raise InputError(f"{_where(lay)}: MASTER_PORT {port} is already in use on {addr}: another job on this node? choose another MASTER_PORT") from None
        if rank == 0:
            raise InputError(f"{_where(lay)}: cannot listen on {addr}:{port} for the rendezvous ({text.splitlines()[0]}); MASTER_ADDR must be an address of node 0") from None
        raise InputError(f"{_where(lay)} could not reach the master (node 0) at {addr}:{port} in {time.monotonic() - t0:.0f} s: "
                         f"is node 0 started? {hint}") from None
    store.set(f"megadna/join/{rank}", json.dumps(lay))
    if rank == 0:
        result = _await_joins(store, lay, t, hint)
        store.set("megadna/join/result", result)
        if result == "ok":
            log.info("rendezvous at %s:%d: all %d ranks joined in %.1f s", addr, port, world, time.monotonic() - t0)
    else:
        try:
            store.wait(["megadna/join/result"], timedelta(seconds=t + 30))
            result = store.get("megadna/join/result").decode()
        except (RuntimeError, OSError) as e:
            raise InputError(f"{_where(lay)}: lost the master (node 0) at {addr}:{port} during the rendezvous ({str(e).splitlines()[0]}); {hint}") from None
    if result != "ok":
        raise InputError(result)
    return store


def _await_joins(store, lay: dict, t: float, hint: str) -> str:
    world = lay["world_size"]
    keys = [f"megadna/join/{r}" for r in range(world)]
    deadline = time.monotonic() + t
    missing = list(range(world))
    while True:
        missing = [r for r in missing if not store.check([keys[r]])]
        if not missing or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    joined = {r: json.loads(store.get(keys[r])) for r in range(world) if r not in missing}
    wrong = {r: j["world_size"] for r, j in joined.items() if j["world_size"] != world}
    if wrong:
        return (f"ranks disagree on the world size: rank 0 expects {world}, " + ", ".join(f"rank {r} {w}" for r, w in sorted(wrong.items()))
                + ": every node must be launched with the same hostfile (or another job is using this MASTER_PORT)")
    if not missing:
        return "ok"
    # DeepSpeed numbers ranks node by node; with equal slots per node a rank's node is rank // slots.
    slots = lay["local_size"]
    nodes = sorted({r // slots for r in missing}) if all(j["node_rank"] == r // slots for r, j in joined.items()) else []
    nnodes = lay["nnodes"] or (world // slots if world % slots == 0 else 0)
    of = f" of {nnodes}" if nnodes else ""
    ranks = _span(missing)
    who = (f"node rank {_span(nodes)}{of} (rank{'s' if len(missing) > 1 else ''} {ranks})" if nodes else f"rank{'s' if len(missing) > 1 else ''} {ranks} of {world}")
    return f"{who} did not join within {t:g} s: is its launcher running? {hint}"


# --------------------------------------------------------------------------------------------------
# Consistency across ranks
# --------------------------------------------------------------------------------------------------


def fingerprint(obj) -> bytes:
    """sha256 of canonical JSON (sorted keys; non-JSON values such as paths as their str)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str).encode()).digest()


def weights_fingerprint(state_dict: dict) -> bytes:
    """sha256 over the names, dtypes, shapes and raw bytes of a state dict's tensors, in name order."""
    h = hashlib.sha256()
    for name in sorted(state_dict):
        t = state_dict[name].detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.digest()


def _device():
    # gloo reduces CPU tensors; NCCL (and the other accelerator backends) need the rank's own device.
    if torch.distributed.get_backend() == "gloo":
        return torch.device("cpu")
    import deepspeed

    return torch.device(deepspeed.get_accelerator().current_device_name())


def _gather(digest: bytes) -> list[tuple[int, bytes]]:
    """(node rank, digest) of every rank, in rank order: one all_gather of 33 small integers per rank.
    Tensors rather than all_gather_object, so no bytes are ever unpickled."""
    node = _layout()["node_rank"]
    mine = torch.tensor([node, *digest], dtype=torch.int64, device=_device())
    out = [torch.empty_like(mine) for _ in range(torch.distributed.get_world_size())]
    torch.distributed.all_gather(out, mine)
    return [(int(t[0]), bytes(t[1:].tolist())) for t in (x.cpu() for x in out)]


def _span(numbers) -> str:
    """[1, 2, 3, 5, 8, 9] -> '1-3,5,8-9'."""
    out, run = [], []
    for n in sorted(set(numbers)):
        if run and n != run[-1] + 1:
            out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
            run = []
        run.append(n)
    if run:
        out.append(f"{run[0]}-{run[-1]}" if len(run) > 1 else str(run[0]))
    return ",".join(out)


def _differing(gathered: list[tuple[int, bytes]]) -> str | None:
    """None when every rank holds rank 0's digest, else 'ranks 8-15 (node 1)'."""
    ref = gathered[0][1]
    odd = [(r, node) for r, (node, d) in enumerate(gathered) if d != ref]
    if not odd:
        return None
    nodes = {n for _, n in odd}
    return f"rank{'s' if len(odd) > 1 else ''} {_span(r for r, _ in odd)} (node{'s' if len(nodes) > 1 else ''} {_span(nodes)})"


def check_consistent(obj, what: str, hint: str = "") -> str:
    """Every rank hashes `obj` (canonical JSON) and all ranks compare; on any difference every rank
    raises the same InputError naming the ranks (and nodes) that differ from rank 0 and on what.
    Returns the hex digest. A no-op outside a multi-rank process group."""
    digest = fingerprint(obj)
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return digest.hex()
    gathered = _gather(digest)
    odd = _differing(gathered)
    if odd:
        raise InputError(f"{odd} {'have' if odd.startswith('ranks') else 'has'} a different {what} than rank 0 (node {gathered[0][0]})"
                         + (f": {hint}" if hint else ": every node must run the same command on the same files"))
    return digest.hex()


def check_replicas(module: torch.nn.Module) -> str | None:
    """Data-parallel replicas (ZeRO 0-2: every rank holds the full module) must hold bitwise the same
    weights: hash them on every rank and compare (as Megatron-LM's check of parameter hashes across
    data-parallel replicas does). Raises ReplicaDivergence naming the odd ranks; returns the hex digest
    (None under ZeRO-3, where each rank holds only a partition and there is nothing to compare).
    Costs one pass over the weights (host copy + sha256): call it at checkpoints, not every step."""
    if any(hasattr(p, "ds_id") for p in module.parameters()):
        log.warning("replica check skipped: ZeRO-3 partitions the parameters")
        return None
    digest = weights_fingerprint(module.state_dict())
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return digest.hex()
    odd = _differing(_gather(digest))
    if odd:
        raise ReplicaDivergence(f"{odd} {'hold' if odd.startswith('ranks') else 'holds'} different model weights than rank 0: the data-parallel replicas diverged "
                                f"(non-deterministic update or a faulty device); this checkpoint is not written. Resume from the last complete one.")
    return digest.hex()


def check_shared_dir(path: str | Path, what: str) -> None:
    """Every rank must see the same directory: rank 0 writes a probe file with a fresh token, every
    rank reads it back. Checkpoints need it (each rank writes its ZeRO shard, rank 0 the completion
    marker), and `--resume auto` only agrees across nodes if they list the same directory."""
    if not torch.distributed.is_initialized() or torch.distributed.get_world_size() == 1:
        return
    path = Path(path)
    probe = path / ".megadna-shared-dir-probe"
    token = torch.zeros(16, dtype=torch.int64, device=_device())
    if torch.distributed.get_rank() == 0:
        path.mkdir(parents=True, exist_ok=True)
        token = torch.tensor(list(os.urandom(16)), dtype=torch.int64, device=token.device)
        probe.write_text(bytes(token.cpu().tolist()).hex())
    torch.distributed.broadcast(token, src=0)  # also a barrier: the file is written before anyone reads
    try:
        seen = probe.read_text().strip() == bytes(token.cpu().tolist()).hex()
    except OSError:
        seen = False
    gathered = _gather(b"\x01" if seen else b"\x00")
    torch.distributed.barrier()
    if torch.distributed.get_rank() == 0:
        probe.unlink(missing_ok=True)
    blind = [(r, n) for r, (n, d) in enumerate(gathered) if d != b"\x01"]
    if blind:
        raise InputError(f"{what} {path} is not shared: rank(s) {_span(r for r, _ in blind)} (node {_span(n for _, n in blind)}) do not see "
                         f"the file rank 0 wrote there. Put it on a filesystem every node mounts at the same path (checkpoints are written by every rank).")


# Signs, in the first line of a collective's error, that a peer is gone rather than a local bug.
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Timed out waiting",
              "Watchdog caught collective operation timeout", "NCCL communicator was aborted", "remote process exited",
              "DistNetworkError")


def on_main(fn, what: str) -> None:
    """Run fn on rank 0 while the other ranks wait, and raise on every rank if it failed: a rank 0 that
    stopped alone would leave the others waiting until the collective timeout."""
    failed, error = 0, None
    if not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 (any failure: the others must hear of it before rank 0 raises it)
            failed, error = 1, e
    if torch.distributed.is_initialized() and torch.distributed.get_world_size() > 1:
        flag = torch.tensor([failed], dtype=torch.int64, device=_device())
        torch.distributed.broadcast(flag, src=0)
        failed = int(flag.item())
    if error is not None:
        raise error
    if failed:
        raise InputError(f"{what} failed on rank 0; its log names the cause")


def peer_failure(exc: BaseException) -> str | None:
    """A one-paragraph explanation when `exc` says another rank is gone (died, froze, lost its
    network), else None. For the entry point: print it instead of a torch/gloo traceback."""
    if not isinstance(exc, (RuntimeError, OSError)) or not torch.distributed.is_initialized():
        return None
    first = (str(exc).strip().splitlines() or [""])[0].split(" This is typically")[0].rstrip(". ")  # gloo's boilerplate
    if not any(sign in first or sign in type(exc).__name__ for sign in _PEER_LOST):
        return None
    lay = _layout()
    return (f"{_where(lay)} lost contact with another rank in a collective ({first[:300]}). "
            f"A node died, froze or lost its network (its own log says which and why); a frozen peer is given up on "
            f"after {TIMEOUT_ENV}={timeout_s():g} s. Nothing partial was marked complete: restart every node with "
            f"--resume auto to continue from the last complete checkpoint.")
