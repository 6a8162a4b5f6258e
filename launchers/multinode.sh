#!/usr/bin/env bash
# Multi-node pre-training from one machine over ssh: pdsh runs launchers/node.sh on every host of the
# hostfile (node rank = the host's line), each starting one rank per slot.
#
#   launchers/multinode.sh HOSTFILE [launchers/pretrain.py arguments...]
#   e.g. launchers/multinode.sh launchers/hostfile.example --deepspeed_config ds_configs/z2.json \
#            --data /shared/shards/hg38 --save_dir /shared/runs/hg38 --max_steps 200000
#
# Needs: passwordless ssh from this machine to every host, pdsh, and on every host the same checkout
# at the same path with the same Python environment (each host runs `cd <the current directory>;
# <this checkout>/launchers/node.sh ...` with this Python). --save_dir must be on a filesystem every
# host shares.
# Environment: launchers/env.sh; its variables (MEGADNA_EXPORT_VARS), MASTER_PORT and NCCL*/PYTHON*/UCX*
# variables are passed to every host. MASTER_ADDR (an address of the first host that the others can
# reach) is the first address `ssh FIRST_HOST hostname -I` gives, unless set.
# Clusters that start one process per node themselves (SLURM, Kubernetes): launchers/node.sh.
#
# Signals and exit code: SIGTERM or SIGINT to this script (or its process group) is passed on to the
# ranks on every host (`pdsh ... pkill` of each host's node launcher); the script keeps waiting while
# they save a checkpoint and exit, and exits with pdsh's code: the largest of the hosts' codes, 0 after a
# clean preemption save. pdsh runs in a session of its own, so a signal for this script cannot cut the
# ssh connections (and the ranks' output) while the ranks save.
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

mapfile -t HOSTS < <(sed 's/#.*//' "$HOSTFILE" | awk 'NF { print $1 }')
mapfile -t LINES < <(sed 's/#.*//' "$HOSTFILE" | awk 'NF { print $1, $2 }')  # "host slots=N", checked above
WORKERS=$(IFS=,; echo "${HOSTS[*]}")
if [ -z "${MASTER_ADDR:-}" ]; then
    MASTER_ADDR=$(ssh -o BatchMode=yes "${HOSTS[0]}" hostname -I | awk '{ print $1 }') || true
    if [ -z "$MASTER_ADDR" ]; then
        echo "multinode.sh: 'ssh ${HOSTS[0]} hostname -I' gave no address; set MASTER_ADDR to an address of ${HOSTS[0]}" >&2
        exit 2
    fi
fi
# The same interpreter on every host, by absolute path (a non-interactive ssh shell has another PATH).
MEGADNA_PYTHON=$(command -v "$MEGADNA_PYTHON") || { echo "multinode.sh: no Python at MEGADNA_PYTHON" >&2; exit 2; }

# What every host runs: the variables, the directory this script was started from (relative paths in
# the arguments stay valid), a copy of the hostfile (it need not be on a shared filesystem), then
# node.sh with pdsh's %n (the host's index in -w, i.e. its line) as the node rank. No other '%': pdsh
# would read it as a substitution.
exports=""
for v in $MEGADNA_EXPORT_VARS MEGADNA_PYTHON MEGADNA_SCRIPT MASTER_PORT $(compgen -e | grep -E '^(NCCL|PYTHON|UCX|MV2|MLFLOW)' || true); do
    if [ -n "${!v:-}" ]; then exports+="export $v=$(printf %q "${!v}"); "; fi
done
remote="${exports}cd $(printf %q "$PWD"); hf=\$(mktemp); for l in $(printf '%q ' "${LINES[@]}"); do echo \"\$l\"; done > \"\$hf\"; "
args=""
if [ $# -gt 0 ]; then args=$(printf '%q ' "$@"); fi
remote+="$(printf %q "$ROOT/launchers/node.sh") \"\$hf\" %n $(printf %q "$MASTER_ADDR") $args; rc=\$?; rm -f \"\$hf\"; exit \$rc"

# The node launchers of this job, by command line (dots as [.], so the pattern does not match the
# shell that runs pkill): python -m megadna.cli.node_launch HOSTFILE NODE_RANK MASTER_ADDR MASTER_PORT ...
pattern="megadna[.]cli[.]node_launch [^ ]+ [0-9]+ ${MASTER_ADDR//./[.]} $MASTER_PORT "
signalled=""
pass_on() {
    signalled=$1
    if [ -z "${pdsh_pid:-}" ]; then return; fi  # nothing started yet: do not start
    echo "multinode.sh: SIG$1: passed on to the ranks on every host; waiting for them to save and exit" >&2
    pdsh -S -f 1024 -w "$WORKERS" "pkill -$1 -f $(printf %q "$pattern")" || true
}
trap 'pass_on TERM' TERM
trap 'pass_on INT' INT
if [ -n "$signalled" ]; then exit 130; fi

setsid -w pdsh -S -f 1024 -w "$WORKERS" "$remote" &
pdsh_pid=$!
while :; do
    rc=0
    wait "$pdsh_pid" || rc=$?
    if [ "$rc" -gt 128 ] && kill -0 "$pdsh_pid" 2>/dev/null; then continue; fi  # a trapped signal, not pdsh's end
    break
done
exit "$rc"
