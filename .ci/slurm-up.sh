#!/usr/bin/env bash
# Bring up a one-node SLURM cluster on this machine, for CI and local tests.
#
#   sudo .ci/slurm-up.sh            # install (if needed), configure, start, wait until idle
#   sudo .ci/slurm-down.sh          # stop the daemons again
#
# Idempotent: packages are installed only when missing, the config is rewritten every time, and
# daemons that are already running (pid file + live process) are left alone.
#
# Made for a fresh Debian 12 machine, run as root. Everything stays on the loopback interface; there
# is no accounting database, so Snakemake must check job status with squeue
# (`--slurm-status-command squeue`, see profiles/slurm-ci/config.yaml and docs/cluster.md).
#
# Environment:
#   POISONDETECT_SLURM_DIR   scratch folder for state, spool, pid files and logs
#                            (default /tmp/poisondetect-slurm)
#   SLURM_UP_TIMEOUT         seconds to wait for the node to become idle (default 60)
set -euo pipefail

SCRATCH=${POISONDETECT_SLURM_DIR:-/tmp/poisondetect-slurm}
TIMEOUT=${SLURM_UP_TIMEOUT:-60}
CONF=/etc/slurm/slurm.conf   # the plugin's job step drops SLURM_CONF: the config must live here

log() { printf '[slurm-up] %s\n' "$*" >&2; }
die() { printf '[slurm-up] ERROR: %s\n' "$*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (it installs packages and starts munged/slurmctld/slurmd)"

start_ns=$(date +%s%N)

# --- 1. packages --------------------------------------------------------------------------------
missing=()
for pkg in slurmctld slurmd slurm-client munge; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
    log "installing ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    # Debian's maintainer scripts try to start the services; that fails without systemd (harmless,
    # we start the daemons by hand below), so policy-rc.d forbids it for the duration.
    policy=/usr/sbin/policy-rc.d
    own_policy=0
    if [[ ! -e $policy ]]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && own_policy=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
    ((own_policy)) && rm -f "$policy"
else
    log "packages already installed"
fi
install_done_ns=$(date +%s%N)

# --- 2. munge -----------------------------------------------------------------------------------
if [[ ! -s /etc/munge/munge.key ]]; then
    log "creating /etc/munge/munge.key"
    if command -v mungekey >/dev/null; then
        mungekey --create --force
    else
        dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none
    fi
fi
chown munge:munge /etc/munge/munge.key
chmod 0400 /etc/munge/munge.key
install -d -o munge -g munge -m 0755 /run/munge
install -d -o munge -g munge -m 0700 /var/lib/munge /var/log/munge

# --- 3. slurm.conf ------------------------------------------------------------------------------
mkdir -p "$SCRATCH"/{state,spool,log,run}
chmod 0755 "$SCRATCH" "$SCRATCH"/{state,spool,log,run}

# `slurmd -C` prints the hardware line, e.g. "NodeName=x CPUs=2 Boards=1 ... RealMemory=24105".
hw=$(slurmd -C | head -1)
cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$hw")
mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$hw")
[[ -n $cpus && -n $mem ]] || die "could not read CPUs/RealMemory from 'slurmd -C': $hw"
# Keep a little memory back for the OS so slurmd never marks the node invalid.
mem=$((mem > 1024 ? mem - 512 : mem))

mkdir -p /etc/slurm
cat >"$CONF.new" <<EOF
# Written by poisondetect/.ci/slurm-up.sh: a one-node cluster on the loopback interface.
ClusterName=poisondetect-ci
SlurmctldHost=localhost
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
SlurmctldPort=6817
SlurmdPort=6818

StateSaveLocation=$SCRATCH/state
SlurmdSpoolDir=$SCRATCH/spool
SlurmctldPidFile=$SCRATCH/run/slurmctld.pid
SlurmdPidFile=$SCRATCH/run/slurmd.pid
SlurmctldLogFile=$SCRATCH/log/slurmctld.log
SlurmdLogFile=$SCRATCH/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info

ProctrackType=proctrack/linuxproc
TaskPlugin=task/affinity
SwitchType=switch/none
MpiDefault=none
MailProg=/bin/true
ReturnToService=2

# No accounting database: sacct does not work, use squeue for status (snakemake:
# --slurm-status-command squeue). Keep finished jobs visible to squeue for 5 minutes.
AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
MinJobAge=300

SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0

NodeName=localhost NodeAddr=127.0.0.1 CPUs=$cpus RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP
EOF
if ! cmp -s "$CONF.new" "$CONF"; then
    mv "$CONF.new" "$CONF"
    conf_changed=1
else
    rm -f "$CONF.new"
    conf_changed=0
fi
log "config $CONF (CPUs=$cpus RealMemory=$mem, scratch $SCRATCH)"

# --- 4. daemons ---------------------------------------------------------------------------------
running() {  # running PIDFILE -> true when the pid file names a live process
    [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null
}

dump_logs() {
    for f in "$SCRATCH"/log/slurmctld.log "$SCRATCH"/log/slurmd.log /var/log/munge/munged.log; do
        [[ -f $f ]] || continue
        printf '\n===== last 40 lines of %s =====\n' "$f" >&2
        tail -n 40 "$f" >&2
    done
}

if running /run/munge/munged.pid; then
    log "munged already running"
else
    log "starting munged"
    su -s /bin/sh munge -c "/usr/sbin/munged" || { dump_logs; die "munged did not start"; }
fi
munge -n | unmunge >/dev/null || { dump_logs; die "munge round trip failed"; }

if running "$SCRATCH/run/slurmctld.pid"; then
    if ((conf_changed)); then log "config changed: scontrol reconfigure"; scontrol reconfigure || true; fi
    log "slurmctld already running"
else
    log "starting slurmctld"
    slurmctld || { dump_logs; die "slurmctld did not start"; }
fi

if running "$SCRATCH/run/slurmd.pid"; then
    log "slurmd already running"
else
    log "starting slurmd"
    slurmd || { dump_logs; die "slurmd did not start"; }
fi

# --- 5. wait until the node is idle ---------------------------------------------------------------
deadline=$((SECONDS + TIMEOUT))
state=""
while :; do
    state=$(sinfo -h -o %t 2>/dev/null | head -1 || true)
    case $state in
        idle | mix | alloc) break ;;  # mix/alloc: already up and running jobs (re-run of this script)
        drain* | down* | inval* | fail*)
            # A node marked down/drained by an earlier run: resume it.
            scontrol update NodeName=localhost State=RESUME >/dev/null 2>&1 || true ;;
    esac
    if ((SECONDS >= deadline)); then
        dump_logs
        die "node not idle after ${TIMEOUT}s (sinfo state: '${state:-no answer}'); logs above"
    fi
    sleep 0.1
done

end_ns=$(date +%s%N)
secs() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b - a) / 1e9 }'; }
log "cluster up in $(secs "$start_ns" "$end_ns")s" \
    "(package install $(secs "$start_ns" "$install_done_ns")s," \
    "config + daemons $(secs "$install_done_ns" "$end_ns")s): node localhost is $state"
sinfo
