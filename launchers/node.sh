#!/usr/bin/env bash
# One node of a multi-node run, for clusters that start one launcher per node themselves (SLURM's srun,
# Kubernetes, a batch system) and have no ssh between nodes:
#
#   launchers/node.sh HOSTFILE NODE_RANK MASTER_ADDR [launchers/pretrain.py arguments...]
#
# Run it on every node with the same hostfile, the same MASTER_ADDR (an address of node 0, the first
# host of the hostfile) and the same arguments; only NODE_RANK differs (0 .. nodes-1, hostfile order).
#   node 0:  launchers/node.sh hostfile 0 10.0.0.1 --deepspeed_config ds_configs/z2.json --data /shared/shards --save_dir /shared/runs/hg38
#   node 1:  launchers/node.sh hostfile 1 10.0.0.1 --deepspeed_config ds_configs/z2.json --data /shared/shards --save_dir /shared/runs/hg38
# It checks the hostfile, then starts one rank per slot of this node's line (python -m
# megadna.cli.node_launch: the environment DeepSpeed's launcher gives a rank, RANK, LOCAL_RANK,
# WORLD_SIZE, MASTER_ADDR, ..., and --local_rank) and waits for them. Environment: launchers/env.sh
# (MASTER_PORT, MEGADNA_DIST_TIMEOUT_S, interfaces, ...). MEGADNA_SCRIPT runs another entry point
# (default pretrain.py).
#
# Signals and exit code: SIGTERM or SIGINT (SLURM before the time limit, preemption, `kill -TERM
# -<pgid>` by hand) is passed on to the ranks, which save a checkpoint and exit; this script waits for
# them and exits with their code: 0 after a clean preemption save, else the first failing rank's code
# (a failing rank's siblings get SIGTERM, then SIGKILL after MEGADNA_KILL_GRACE_S, default 30 s).
# It does not go through DeepSpeed's runner/launcher, which exit 1 (the runner at once) on SIGTERM and
# SIGKILL ranks still saving 30 s later.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
source "$HERE/env.sh"

if [ $# -lt 3 ]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
HOSTFILE=$1 NODE_RANK=$2 MASTER_ADDR=$3
shift 3
SCRIPT=${MEGADNA_SCRIPT:-$ROOT/launchers/pretrain.py}

"$MEGADNA_PYTHON" "$ROOT/tools/check_hostfile.py" "$HOSTFILE" --node_rank "$NODE_RANK"
echo "node.sh: node rank $NODE_RANK, master $MASTER_ADDR:$MASTER_PORT, $MEGADNA_DIST_TIMEOUT_S s rendezvous/collective timeout" >&2

# exec: the launcher takes this process's place, so a signal for this script reaches it directly.
exec "$MEGADNA_PYTHON" -m megadna.cli.node_launch "$HOSTFILE" "$NODE_RANK" "$MASTER_ADDR" "$MASTER_PORT" "$SCRIPT" "$@"
