"""Check a DeepSpeed hostfile before launching a multi-node job (the launcher scripts run this first).

    python tools/check_hostfile.py hostfile                          # syntax, slots, duplicates
    python tools/check_hostfile.py hostfile --node_rank 1            # ... and that node rank 1 exists
    python tools/check_hostfile.py hostfile --check_reachable        # ... and every host answers on TCP 22
    python tools/check_hostfile.py hostfile --check_reachable --ssh  # ... and passwordless ssh works (pdsh)

Exit status 0 with a one-line summary (nodes, world size, which ranks live where), or 2 with a message
naming the file, the line and what to change.
"""

from __future__ import annotations

import argparse

from megadna.cli.args import parser
from megadna.cli.common import entry_point
from megadna.errors import InputError
from megadna.train.hostfile import check_node_rank, check_reachable, describe, parse_hostfile


def build_parser() -> argparse.ArgumentParser:
    p = parser("megadna check-hostfile", __doc__)
    p.add_argument("hostfile", help="DeepSpeed hostfile: one 'host slots=N' line per node, in node-rank order")
    p.add_argument("--node_rank", type=int, default=None, help="also check that this node rank exists (per-node launch, --no_ssh)")
    p.add_argument("--nodes", type=int, default=None, help="also check that the hostfile lists exactly this many nodes")
    p.add_argument("--check_reachable", action="store_true", help="probe every host (in parallel, each bounded by --timeout)")
    p.add_argument("--ssh", action="store_true", help="with --check_reachable: run 'ssh -o BatchMode=yes host true' instead of a TCP connect")
    p.add_argument("--port", type=int, default=22, help="TCP port (or ssh port) to probe")
    p.add_argument("--timeout", type=float, default=5.0, help="seconds per host probe")
    return p


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    hosts = parse_hostfile(args.hostfile)
    if args.nodes is not None and len(hosts) != args.nodes:
        raise InputError(f"{args.hostfile}: lists {len(hosts)} node(s), expected {args.nodes}")
    if args.node_rank is not None:
        check_node_rank(args.hostfile, hosts, args.node_rank)
    if args.check_reachable:
        check_reachable(args.hostfile, hosts, port=args.port, timeout_s=args.timeout, ssh=args.ssh)
    print(f"{args.hostfile}: {describe(hosts)}" + (" - all reachable" if args.check_reachable else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
