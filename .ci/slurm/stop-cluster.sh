#!/usr/bin/env bash
# Stop the single-node SLURM cluster started by start-cluster.sh.
#
# Usage (as root):  .ci/slurm/stop-cluster.sh [STATE_DIR] [--purge]
#   STATE_DIR   default $WSSS_SLURM_DIR or /tmp/wsss-slurm
#   --purge     also delete STATE_DIR (only if it holds a slurm.conf written by start-cluster.sh)
#
# Safe to call twice or when nothing runs: every step checks first.  It stops slurmctld/slurmd
# (`scontrol shutdown`, then signals by pid file as a fallback), kills munged only if
# start-cluster.sh started it (pid recorded in STATE_DIR/munged.pid), and removes the
# /etc/slurm symlinks that point into STATE_DIR.  Jobs still queued are kept in STATE_DIR/state
# and come back on the next start unless --purge is given.
set -euo pipefail

export PATH="$PATH:/usr/sbin:/sbin"
readonly MARKER="# Written by wsss .ci/slurm/start-cluster.sh"

log() { printf '[stop-cluster] %s\n' "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

state_dir=""
purge=0
for arg in "$@"; do
    case $arg in
        --purge) purge=1 ;;
        -*) die "unknown option $arg" ;;
        *) state_dir=$arg ;;
    esac
done
state_dir=${state_dir:-${WSSS_SLURM_DIR:-/tmp/wsss-slurm}}
[[ $state_dir == /* ]] || state_dir="$PWD/$state_dir"
[[ $(id -u) -eq 0 ]] || die "must run as root"

# Print the pid in PIDFILE if it is alive and runs COMM (guards against recycled pids).
live_pid() {  # live_pid PIDFILE COMM
    local pid
    [[ -s $1 ]] || return 1
    pid=$(<"$1")
    [[ $pid =~ ^[0-9]+$ ]] && [[ -r /proc/$pid/comm ]] && [[ $(</proc/"$pid"/comm) == "$2" ]] || return 1
    printf '%s\n' "$pid"
}

# Wait up to $3 seconds for the daemon to exit, then TERM, then KILL.
stop_daemon() {  # stop_daemon PIDFILE COMM GRACE_S
    local pid i
    pid=$(live_pid "$1" "$2") || { rm -f "$1"; return 0; }
    for ((i = 0; i < $3 * 10; i++)); do
        [[ -d /proc/$pid ]] || { log "$2 (pid $pid) stopped"; rm -f "$1"; return 0; }
        sleep 0.1
    done
    log "$2 (pid $pid) still running; sending TERM"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 50; i++)); do
        [[ -d /proc/$pid ]] || { rm -f "$1"; return 0; }
        sleep 0.1
    done
    log "$2 (pid $pid) ignores TERM; sending KILL"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$1"
}

conf="$state_dir/slurm.conf"
if [[ -f $conf ]] && command -v scontrol >/dev/null 2>&1 &&
    SLURM_CONF=$conf scontrol ping 2>/dev/null | grep -q 'is UP'; then
    log "scontrol shutdown"
    SLURM_CONF=$conf scontrol shutdown >&2 || true
fi
# slurmctld first: `scontrol shutdown` tells it to stop every slurmd before it exits.
stop_daemon "$state_dir/slurmctld.pid" slurmctld 20
stop_daemon "$state_dir/slurmd.pid" slurmd 10

if [[ -s $state_dir/munged.pid ]]; then
    if pid=$(live_pid "$state_dir/munged.pid" munged); then
        log "stopping munged (pid $pid)"
        kill -TERM "$pid" 2>/dev/null || true
    fi
    stop_daemon "$state_dir/munged.pid" munged 5
fi

for f in /etc/slurm/slurm.conf /etc/slurm/gres.conf; do
    if [[ -L $f && $(readlink "$f") == "$state_dir"/* ]]; then
        rm -f "$f"
    fi
done

if ((purge)) && [[ -d $state_dir ]]; then
    if [[ -f $conf ]] && grep -qF "$MARKER" "$conf"; then
        rm -rf -- "$state_dir"
        log "removed $state_dir"
    else
        log "not purging $state_dir: no slurm.conf written by start-cluster.sh in it"
    fi
fi
log "stopped"
