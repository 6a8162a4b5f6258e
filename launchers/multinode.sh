#!/usr/bin/env bash
# Multi-node pre-training from one machine over ssh: DeepSpeed's default mode, in which its runner
# uses pdsh to start one launcher on every host of the hostfile (each starts one rank per slot).
#
#   launchers/multinode.sh HOSTFILE [launchers/pretrain.py arguments...]
#   e.g. launchers/multinode.sh launchers/hostfile.example --deepspeed_config ds_configs/z2.json \
#            --data /shared/shards/hg38 --save_dir /shared/runs/hg38 --max_steps 200000
#
# Needs: passwordless ssh from this machine to every host, pdsh, and on every host the same checkout
# at the same path with the same Python environment (the runner `cd`s to this directory there and
# runs the same interpreter). --save_dir must be on a filesystem every host shares.
# Environment: launchers/env.sh. MASTER_ADDR (an address of the first host that the others can reach)
# is found by DeepSpeed through `ssh host hostname -I` unless set.
# Clusters that start one process per node themselves (SLURM, Kubernetes): launchers/node.sh.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$HERE")
source "$HERE/env.sh"

if [ $# -lt 1 ]; then
    sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//' >&2
    exit 2
fi
HOSTFILE=$1
shift
SCRIPT=${MEGADNA_SCRIPT:-$ROOT/launchers/pretrain.py}

# Syntax, slots, duplicates, and passwordless ssh to every host, each bounded: a bad hostfile or a
# dead host costs seconds here instead of a rendezvous timeout later.
"$MEGADNA_PYTHON" "$ROOT/tools/check_hostfile.py" "$HOSTFILE" --check_reachable --ssh --timeout "${MEGADNA_SSH_TIMEOUT_S:-10}"

# DeepSpeed forwards only NCCL*/PYTHON*/UCX*/... variables to the other hosts by itself; the rest of
# env.sh reaches them through the DS_ENV_FILE its runner reads (KEY=VALUE lines).
envfile=$(mktemp "${TMPDIR:-/tmp}/megadna-env.XXXXXX")
trap 'rm -f "$envfile"' EXIT
for v in $MEGADNA_EXPORT_VARS; do
    if [ -n "${!v:-}" ]; then echo "$v=${!v}"; fi
done > "$envfile"
export DS_ENV_FILE=$envfile

"$DEEPSPEED" --hostfile "$HOSTFILE" --master_port "$MASTER_PORT" ${MASTER_ADDR:+--master_addr "$MASTER_ADDR"} "$SCRIPT" "$@"
