# The environment a multi-node megadna run depends on, in one place. Sourced by multinode.sh, node.sh
# and slurm.sbatch. Every value is a default: a variable already set in the calling environment wins.
# See docs/MULTINODE.md ("the usual hangs") for why each one matters.

# --- Rendezvous -------------------------------------------------------------------------------------
# TCP port on node 0 (the first host of the hostfile) for the rendezvous store; it must be free there
# and open from every node. Two jobs sharing a node need different ports (slurm.sbatch derives one from
# the job id).
export MASTER_PORT=${MASTER_PORT:-29500}
# Seconds the rendezvous waits for every node, and any collective waits for a peer, before the job
# ends with an error naming what is missing (megadna.train.distributed). Must exceed the longest legitimate
# wait of one rank for another: a checkpoint save, an evaluation, the first step.
export MEGADNA_DIST_TIMEOUT_S=${MEGADNA_DIST_TIMEOUT_S:-600}

# --- Network interface ------------------------------------------------------------------------------
# The most common multi-node hang: a rank advertises an address the others cannot reach (docker0, a
# virtual bridge, a management network). Name the interface that connects the nodes, or exclude the
# wrong ones with a leading ^ (NCCL only). `ip -br addr` lists them.
# export NCCL_SOCKET_IFNAME=eth0          # or ^docker0,lo
# export GLOO_SOCKET_IFNAME=eth0          # gloo (CPU runs, and torch's CPU-side collectives)

# --- InfiniBand / RoCE ------------------------------------------------------------------------------
# Leave IB on where it works; it is several times faster than TCP. Disable it only to diagnose, or on
# nodes whose IB is down (NCCL then falls back to sockets on NCCL_SOCKET_IFNAME).
# export NCCL_IB_DISABLE=1
# export NCCL_IB_HCA=mlx5_0,mlx5_1        # pick the HCAs when a node has several fabrics

# --- Failure handling -------------------------------------------------------------------------------
# A collective that times out (a dead or frozen peer) aborts the NCCL communicators and ends the
# process, so the launcher sees a failure instead of a rank blocked forever. (torch's own default is 3,
# which also tears down; set explicitly so the behaviour does not depend on the torch version.)
export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
# Alternative for debugging: the host thread blocks in each collective and raises at the timeout
# (slower: no compute/communication overlap). Do not combine with the line above.
# export TORCH_NCCL_BLOCKING_WAIT=1
# WARN prints only problems; INFO shows, at start, which interface and transport (IB, socket) NCCL took.
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}

# --- CPU threads ------------------------------------------------------------------------------------
# Threads per rank for intra-op CPU work. DeepSpeed's launcher leaves it unset, and torch then takes
# every core in every rank (8 ranks x all cores = oversubscription). GPU runs need few; for CPU-only
# training set cores per node / ranks per node.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}

# --- Stopping ---------------------------------------------------------------------------------------
# SIGTERM/SIGINT to a launcher (node.sh, multinode.sh, slurm.sbatch) is passed on to the ranks, and the
# launcher waits for them however long their checkpoint save takes (under SLURM, the --signal lead
# time bounds it). Only when a rank FAILS are its siblings on that node sent SIGTERM and, this many
# seconds later, SIGKILL.
export MEGADNA_KILL_GRACE_S=${MEGADNA_KILL_GRACE_S:-30}

# --- Tools ------------------------------------------------------------------------------------------
# The Python that has megadna (and DeepSpeed) installed; an activated venv provides it.
MEGADNA_PYTHON=${MEGADNA_PYTHON:-python}

# Variables the other nodes must see too. With node.sh and slurm.sbatch every node sources this file
# itself; over pdsh (multinode.sh) they are exported in the command each host runs, with MASTER_PORT and
# any NCCL*/PYTHON*/UCX*/MV2*/MLFLOW* variable.
MEGADNA_EXPORT_VARS="MEGADNA_DIST_TIMEOUT_S MEGADNA_KILL_GRACE_S OMP_NUM_THREADS GLOO_SOCKET_IFNAME TORCH_NCCL_ASYNC_ERROR_HANDLING TORCH_NCCL_BLOCKING_WAIT MEGADNA_SHARED_DATA"
