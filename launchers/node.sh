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
# It checks the hostfile, then runs `deepspeed --hostfile HOSTFILE --no_ssh --node_rank NODE_RANK ...`,
# which starts one rank per slot of this node's line. Environment: launchers/env.sh (MASTER_PORT,
# MEGADNA_DIST_TIMEOUT_S, interfaces, ...). MEGADNA_SCRIPT runs another entry point (default pretrain.py).
#
# Signals: SIGTERM (SLURM before the time limit, preemption, or `kill -TERM -<pgid>` by hand) must reach
# the training ranks, which save a checkpoint and exit, while the launchers above them stay alive to
# collect the exit status. DeepSpeed's runner has no SIGTERM handler in --no_ssh mode and would die at
# once, orphaning the ranks (and, under SLURM, the end of the task kills what is left). So this script
# and the runner ignore SIGTERM/SIGINT; DeepSpeed's per-node launch.py installs its own handler, which
# passes SIGTERM to the ranks and SIGKILLs any still running 30 s later.
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

trap '' TERM INT  # inherited as "ignored" by the runner; see the header
exec "$DEEPSPEED" --hostfile "$HOSTFILE" --no_ssh --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" --master_port "$MASTER_PORT" "$SCRIPT" "$@"
