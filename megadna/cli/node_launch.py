"""Start this node's ranks of a job and stay with them until they end (what launchers/node.sh runs).

    python -m megadna.cli.node_launch HOSTFILE NODE_RANK MASTER_ADDR MASTER_PORT SCRIPT [script args...]

Each rank gets what DeepSpeed's per-node launcher (deepspeed.launcher.launch) gives it: RANK,
LOCAL_RANK, WORLD_SIZE, LOCAL_SIZE, CROSS_RANK, CROSS_SIZE, MASTER_ADDR, MASTER_PORT,
CUDA_VISIBLE_DEVICES=0..slots-1 and `--local_rank=i`, with the ranks of node r numbered after those of
nodes 0..r-1 in hostfile order. It differs in what happens at the end:

- SIGTERM or SIGINT (SLURM before the time limit, preemption, `kill -TERM -<pgid>`) is passed on to the
  ranks, and the launcher keeps waiting while they save a checkpoint and exit. Its exit code is theirs:
  0 after a clean preemption save. (DeepSpeed's launcher exits 1 and SIGKILLs ranks still running 30 s
  after the signal; DeepSpeed's runner, the `deepspeed` command, exits at once.)
- When a rank fails, the others get SIGTERM, and SIGKILL after MEGADNA_KILL_GRACE_S (default 30) s; the
  launcher exits with the failed rank's code (128 + N for a rank killed by signal N).
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time

from megadna.cli.args import parser
from megadna.cli.common import entry_point
from megadna.errors import InputError
from megadna.train.hostfile import check_node_rank, parse_hostfile

GRACE_ENV = "MEGADNA_KILL_GRACE_S"
POLL_S = 0.2


def build_parser() -> argparse.ArgumentParser:
    p = parser("python -m megadna.cli.node_launch", __doc__)
    p.add_argument("hostfile", help="DeepSpeed hostfile: one 'host slots=N' line per node, in node-rank order")
    p.add_argument("node_rank", type=int, help="this node's line in the hostfile (0-based)")
    p.add_argument("master_addr", help="an address of node 0 that every node can reach")
    p.add_argument("master_port", type=int, help="the rendezvous port on node 0")
    p.add_argument("script", help="the training script, run as `python -u SCRIPT --local_rank=i ARGS`")
    p.add_argument("script_args", nargs=argparse.REMAINDER, help="passed on to every rank")
    return p


def rank_envs(hosts, node_rank: int, master_addr: str, master_port: int, base: dict) -> list[dict]:
    """The environment of each rank of node `node_rank`, as DeepSpeed's launcher sets it."""
    first = sum(h.slots for h in hosts[:node_rank])
    slots = hosts[node_rank].slots
    common = {"MASTER_ADDR": master_addr, "MASTER_PORT": str(master_port), "WORLD_SIZE": str(sum(h.slots for h in hosts)),
              "LOCAL_SIZE": str(slots), "CROSS_RANK": str(node_rank), "CROSS_SIZE": str(len(hosts)),
              "CUDA_VISIBLE_DEVICES": ",".join(map(str, range(slots)))}
    return [base | common | {"RANK": str(first + i), "LOCAL_RANK": str(i)} for i in range(slots)]


def _grace_s() -> float:
    raw = os.environ.get(GRACE_ENV, "30")
    try:
        return float(raw)
    except ValueError:
        raise InputError(f"{GRACE_ENV}={raw!r} is not a number of seconds") from None


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


class Ranks:
    """This node's rank processes: started together, signalled together, waited for together."""

    def __init__(self, script: str, script_args: list[str], envs: list[dict]):
        # DeepSpeed's command line for a rank: python -u SCRIPT --local_rank=i ARGS
        self.procs = [subprocess.Popen([sys.executable, "-u", script, f"--local_rank={i}", *script_args], env=env)
                      for i, env in enumerate(envs)]
        self.alive = list(self.procs)

    def signal(self, sig: int) -> None:
        for p in self.alive:
            try:
                p.send_signal(sig)
            except ProcessLookupError:
                pass

    def wait(self, grace_s: float) -> int:
        """Until every rank has ended: 0, or the code of the first rank that failed (the others are then
        stopped: SIGTERM, SIGKILL after grace_s)."""
        code, kill_at = 0, None
        while self.alive:
            for p in list(self.alive):
                if p.poll() is None:
                    continue
                self.alive.remove(p)
                if p.returncode != 0 and code == 0:
                    code = _exit_code(p.returncode)
                    if self.alive:
                        _say(f"local rank {self.procs.index(p)} exited with {code}: stopping the other ranks of this node")
                        self.signal(signal.SIGTERM)
                        kill_at = time.monotonic() + grace_s
            if kill_at is not None and time.monotonic() > kill_at and self.alive:
                _say(f"{len(self.alive)} rank(s) still running {grace_s:g} s after SIGTERM: SIGKILL")
                self.signal(signal.SIGKILL)
                kill_at = None
            time.sleep(POLL_S)
        return code


def _say(line: str) -> None:
    print(f"node_launch: {line}", file=sys.stderr, flush=True)


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    hosts = parse_hostfile(args.hostfile)
    check_node_rank(args.hostfile, hosts, args.node_rank)
    grace = _grace_s()
    envs = rank_envs(hosts, args.node_rank, args.master_addr, args.master_port, dict(os.environ))
    # Handlers before the ranks start: a signal in between must not kill the launcher and orphan them.
    pending: list[int] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, frame: pending.append(signum))
    ranks = Ranks(args.script, args.script_args, envs)
    first = int(envs[0]["RANK"])
    _say(f"node rank {args.node_rank}: ranks {first}-{first + len(envs) - 1} of {envs[0]['WORLD_SIZE']} started "
         f"(pids {' '.join(str(p.pid) for p in ranks.procs)})")

    def forward(signum, frame):
        _say(f"{signal.Signals(signum).name}: passed on to the ranks; waiting for them to save and exit")
        ranks.signal(signum)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    for signum in pending:
        forward(signum, None)
    return ranks.wait(grace)


if __name__ == "__main__":
    raise SystemExit(main())
