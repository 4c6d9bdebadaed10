#!/usr/bin/env bash
# Stop the one-node SLURM cluster started by .ci/slurm-up.sh: slurmd, slurmctld, then munged,
# each by its pid file (never by process name). Safe to run when nothing is running.
#
# Environment: POISONDETECT_SLURM_DIR (default /tmp/poisondetect-slurm), as for slurm-up.sh.
# Pass --purge to also delete the scratch folder (state, spool, logs).
set -euo pipefail

SCRATCH=${POISONDETECT_SLURM_DIR:-/tmp/poisondetect-slurm}

log() { printf '[slurm-down] %s\n' "$*" >&2; }

stop() {  # stop NAME PIDFILE
    local name=$1 pidfile=$2 pid i
    if [[ ! -s $pidfile ]]; then
        log "$name: no pid file ($pidfile)"
        return 0
    fi
    pid=$(cat "$pidfile")
    if ! kill -0 "$pid" 2>/dev/null; then
        log "$name: not running (stale pid $pid)"
        rm -f "$pidfile"
        return 0
    fi
    kill -TERM "$pid"
    for ((i = 0; i < 100; i++)); do           # up to 10 s
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name: still alive after 10 s, sending SIGKILL to $pid"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    rm -f "$pidfile"
    log "$name: stopped (pid $pid)"
}

stop slurmd "$SCRATCH/run/slurmd.pid"
stop slurmctld "$SCRATCH/run/slurmctld.pid"
stop munged /run/munge/munged.pid

if [[ ${1:-} == --purge ]]; then
    rm -rf "$SCRATCH"
    log "removed $SCRATCH"
fi
