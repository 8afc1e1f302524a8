#!/usr/bin/env bash
# Start a throw-away single-node SLURM cluster (munged + slurmctld + slurmd) with one fake GPU,
# for testing the Snakemake SLURM executor end to end (docs/cluster.md, "Local test cluster").
#
# Usage (as root):  .ci/slurm/start-cluster.sh [STATE_DIR]
#   STATE_DIR   config, state, spool, logs and pid files; default $WSSS_SLURM_DIR or /tmp/wsss-slurm
# Stdout: only the state dir (so `dir=$(start-cluster.sh)` works); progress goes to stderr.
#
# Environment knobs:
#   WSSS_SLURM_TIMEOUT=60        seconds to wait for the node to become idle
#   WSSS_SLURM_PARTITION=debug   name of the default partition (partitions "cpu" and "gpu" hold
#                                the same node, matching profiles/slurm)
#   WSSS_SLURM_MEM_MARGIN_MB=512 memory kept back from what `slurmd -C` detects
#   WSSS_SLURM_GPUS=2            fake GPUs on the node (1 to 4), so GPU jobs can run side by side
#   WSSS_SLURM_NO_ETC=1          leave /etc/slurm alone; clients then need
#                                `export SLURM_CONF=$STATE_DIR/slurm.conf`
#
# Client commands (sbatch/squeue/scontrol, including the ones the Snakemake executor plugin runs)
# read /etc/slurm/slurm.conf unless SLURM_CONF is set, so by default this script symlinks
# /etc/slurm/{slurm,gres}.conf to the files in STATE_DIR.  A foreign /etc/slurm/slurm.conf is
# moved aside to *.wsss-bak.<epoch> first.
#
# Running it again while the cluster is up only re-checks it; to apply a changed configuration
# run stop-cluster.sh first.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
readonly MARKER="# Written by wsss .ci/slurm/start-cluster.sh"

log() { printf '[start-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

state_dir=${1:-${WSSS_SLURM_DIR:-/tmp/wsss-slurm}}
timeout_s=${WSSS_SLURM_TIMEOUT:-60}
partition=${WSSS_SLURM_PARTITION:-debug}
margin_mb=${WSSS_SLURM_MEM_MARGIN_MB:-512}
gpus=${WSSS_SLURM_GPUS:-2}
t0=$(date +%s.%N)

[[ $(id -u) -eq 0 ]] || die "must run as root (it starts daemons and writes /etc/munge, /etc/slurm)"
[[ $state_dir == /* ]] || state_dir="$PWD/$state_dir"

# Print the last lines of every log we know of; called on any failure after the daemons start.
dump_logs() {
    local f
    for f in "$state_dir"/log/slurmctld.log "$state_dir"/log/slurmd.log /var/log/munge/munged.log; do
        [[ -f $f ]] || continue
        log "---- tail of $f ----"
        tail -n 25 "$f" >&2 || true
    done
}

# A pid file is "ours and alive" when the pid exists and runs the expected program, so a stale
# file whose pid was recycled by an unrelated process is not mistaken for a running daemon.
pid_alive() {  # pid_alive PIDFILE COMM
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/comm ]] && [[ $(</proc/"$pid"/comm) == "$2" ]]
}

# ---------------------------------------------------------------- 1. packages
missing=()
for pair in slurmctld:slurmctld slurmd:slurmd sbatch:slurm-client munged:munge; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt_install() { apt-get install -y -q --no-install-recommends "${missing[@]}" >&2; }
    # Fresh containers ship without package lists; update only when the first try fails.
    apt_install || { apt-get update -q >&2 && apt_install; } || die "apt-get install ${missing[*]} failed"
fi

# ---------------------------------------------------------------- 2. munge
id munge >/dev/null 2>&1 || die "user 'munge' does not exist (is the munge package installed?)"
install -d -o munge -g munge -m 0700 /etc/munge /var/lib/munge /var/log/munge
install -d -o munge -g munge -m 0755 /run/munge
key=/etc/munge/munge.key
if [[ ! -s $key ]]; then
    log "creating munge key $key"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$key" --force
    else
        dd if=/dev/urandom of="$key" bs=1024 count=1 status=none
    fi
fi
chown munge:munge "$key"
chmod 0400 "$key"

munge_ok() { munge -n </dev/null 2>/dev/null | unmunge >/dev/null 2>&1; }
mkdir -p "$state_dir"
if munge_ok; then
    log "munged already answers; reusing it"
else
    log "starting munged as user munge"
    runuser -u munge -- munged
    for _ in $(seq 50); do munge_ok && break; sleep 0.1; done
    munge_ok || { dump_logs; die "munged did not come up"; }
    # Remember that we started it, so stop-cluster.sh kills this daemon and no other.
    cp /run/munge/munged.pid "$state_dir/munged.pid"
fi

# ---------------------------------------------------------------- 3. configuration
host=$(hostname -s)
cpus=$(nproc)
mkdir -p "$state_dir"/{state,spool,log}
detected_mb=$(slurmd -C 2>/dev/null | sed -n 's/.*RealMemory=\([0-9][0-9]*\).*/\1/p' | head -n 1 || true)
[[ -n $detected_mb ]] || detected_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
real_mb=$((detected_mb - margin_mb))
# Tiny VMs: never configure less than half of the memory (SLURM rejects RealMemory above the
# detected value, not below it).
((real_mb >= detected_mb / 2)) || real_mb=$((detected_mb / 2))

conf="$state_dir/slurm.conf"
gres="$state_dir/gres.conf"
extra_partitions=""
for name in cpu gpu; do
    [[ $name == "$partition" ]] || extra_partitions+="PartitionName=$name Nodes=$host MaxTime=INFINITE State=UP"$'\n'
done
cat >"$conf" <<EOF
$MARKER on $(date -u +%Y-%m-%dT%H:%M:%SZ)
ClusterName=wsss
SlurmctldHost=$host
AuthType=auth/munge
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
ReturnToService=2
SlurmUser=root
SlurmctldPidFile=$state_dir/slurmctld.pid
SlurmdPidFile=$state_dir/slurmd.pid
SlurmdSpoolDir=$state_dir/spool
StateSaveLocation=$state_dir/state
SlurmctldLogFile=$state_dir/log/slurmctld.log
SlurmdLogFile=$state_dir/log/slurmd.log
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
AccountingStorageType=accounting_storage/none
# (AccountingStorageTRES=gres/gpu would need slurmdbd; "scontrol show job" shows the GPU request
# as TresPerJob=gres:gpu:N instead.)
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
# Without accounting, squeue is the executor's only way to see finished jobs, and it lists them
# for MinJobAge seconds; the Snakemake plugin wants at least 120. An hour keeps every job of a
# test run visible until the test reads the records (SLURM forgets a finished job after MinJobAge).
MinJobAge=3600
# Jobs submitted without --mem would otherwise reserve the whole node and run one at a time.
DefMemPerCPU=1024
GresTypes=gpu
NodeName=$host CPUs=$cpus RealMemory=$real_mb Gres=gpu:$gpus State=UNKNOWN
PartitionName=$partition Nodes=$host Default=YES MaxTime=INFINITE State=UP
# The same node again under the names a typical site uses, so profiles/slurm (cpu/gpu) runs here.
$extra_partitions
EOF
# A device file per GPU is required: a gres.conf with only Count=N marks the node INVAL.  Character
# devices nobody uses give SLURM something to "bind"; a job that asks for one gets CUDA_VISIBLE_DEVICES.
devices=(/dev/null /dev/zero /dev/full /dev/urandom)
((gpus >= 1 && gpus <= ${#devices[@]})) || die "WSSS_SLURM_GPUS must be 1 to ${#devices[@]}, got $gpus"
{
    echo "$MARKER"
    for ((i = 0; i < gpus; i++)); do echo "NodeName=$host Name=gpu File=${devices[i]}"; done
} >"$gres"

if [[ ${WSSS_SLURM_NO_ETC:-0} != 1 ]]; then
    install -d -m 0755 /etc/slurm
    for f in slurm.conf gres.conf; do
        target=/etc/slurm/$f
        if [[ -e $target && ! -L $target ]] && ! grep -qF "$MARKER" "$target"; then
            log "moving foreign $target to $target.wsss-bak.$(date +%s)"
            mv "$target" "$target.wsss-bak.$(date +%s)"
        fi
        ln -sfn "$state_dir/$f" "$target"
    done
fi
export SLURM_CONF=$conf   # the daemons and our own client calls read the state dir directly

# ---------------------------------------------------------------- 4. daemons
if pid_alive "$state_dir/slurmctld.pid" slurmctld; then
    log "slurmctld already running (pid $(<"$state_dir/slurmctld.pid"))"
else
    log "starting slurmctld"
    slurmctld || { dump_logs; die "slurmctld failed to start"; }
fi
if pid_alive "$state_dir/slurmd.pid" slurmd; then
    log "slurmd already running (pid $(<"$state_dir/slurmd.pid"))"
else
    log "starting slurmd"
    slurmd || { dump_logs; die "slurmd failed to start"; }
fi

# ---------------------------------------------------------------- 5. wait for an idle node
deadline=$(($(date +%s) + timeout_s))
resumed=0
state=""
while :; do
    state=$(sinfo -h -N -n "$host" -o '%T' 2>/dev/null | head -n 1 || true)
    case $state in
        idle | mixed | allocated) break ;;
        "")
            # No answer: fail fast if slurmctld already died (bad config), instead of waiting.
            if ! pid_alive "$state_dir/slurmctld.pid" slurmctld; then
                sleep 1
                pid_alive "$state_dir/slurmctld.pid" slurmctld || { dump_logs; die "slurmctld exited"; }
            fi
            ;;
        inval*)
            # Configured CPUs/RealMemory/Gres exceed what slurmd found; waiting will not help.
            sinfo -N -l >&2 2>&1 || true
            dump_logs
            die "node $host is INVAL: slurm.conf asks for more than slurmd detects (see REASON above)"
            ;;
        down* | drain* | drained*)
            # A node left down by an unclean stop registers again but stays down; resume it once.
            if ((!resumed)); then
                scontrol update NodeName="$host" State=RESUME >/dev/null 2>&1 || true
                resumed=1
            fi
            ;;
    esac
    if (($(date +%s) >= deadline)); then
        log "node $host state is '${state:-<no answer from slurmctld>}' after ${timeout_s}s"
        sinfo -N -l >&2 2>&1 || true
        dump_logs
        die "cluster did not become ready within ${timeout_s}s (WSSS_SLURM_TIMEOUT)"
    fi
    sleep 0.5
done

elapsed=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
log "node $host is $state (CPUs=$cpus RealMemory=${real_mb}MB Gres=gpu:$gpus; partitions $partition*, cpu, gpu) after ${elapsed}s"
if [[ ${WSSS_SLURM_NO_ETC:-0} == 1 ]]; then
    log "clients need: export SLURM_CONF=$conf"
fi
printf '%s\n' "$state_dir"
