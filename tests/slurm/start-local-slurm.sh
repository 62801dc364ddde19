#!/usr/bin/env bash
# A one-node SLURM on this machine, for the SLURM tests and for trying the slurm profile by hand.
#
#   tests/slurm/start-local-slurm.sh            # write slurm.conf, start munged, slurmctld, slurmd; wait until idle
#   tests/slurm/start-local-slurm.sh --install  # the same, after installing slurm-wlm and munge (Debian/Ubuntu, apt-get)
#   tests/slurm/start-local-slurm.sh status     # print sinfo / scontrol ping
#   tests/slurm/start-local-slurm.sh stop       # stop the daemons started here
#
# Needs root (the daemons run as root; this is a test cluster, not a production set-up). Idempotent:
# running it again with the daemons up only checks that the node is idle; a (re)start clears the
# jobs an earlier run left in its state directory. The node is this machine
# (`slurmd -C` gives its CPUs and memory); one partition `debug`; no accounting database (poll jobs
# with `squeue`, as profiles/slurm does); no cgroups (proctrack/linuxproc), so it also runs in
# containers. Jobs requeue on `scontrol requeue` and keep their job id. Environment:
#   SLURM_CONF            where to write slurm.conf (default /etc/slurm/slurm.conf)
#   LOCAL_SLURM_STATE     state, spool, logs and pid files (default /var/lib/local-slurm)
#   LOCAL_SLURM_TIMEOUT   seconds to wait for the node to become idle (default 60)
set -euo pipefail

SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
STATE=${LOCAL_SLURM_STATE:-/var/lib/local-slurm}
TIMEOUT=${LOCAL_SLURM_TIMEOUT:-60}
export SLURM_CONF

log() { echo "start-local-slurm: $*" >&2; }
die() { log "$*"; exit 1; }

install_packages() {
    command -v apt-get >/dev/null || die "--install needs apt-get (Debian/Ubuntu); install slurm-wlm and munge yourself"
    log "installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
}

pid_alive() { [[ -s $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

node_state() { sinfo -h -N -o '%T' 2>/dev/null | head -n1; }

stop_daemons() {
    local name pidfile
    for name in slurmd slurmctld munged; do
        pidfile="$STATE/run/$name.pid"
        if pid_alive "$pidfile"; then
            log "stopping $name (pid $(cat "$pidfile"))"
            kill "$(cat "$pidfile")" || true
            for _ in $(seq 50); do pid_alive "$pidfile" || break; sleep 0.1; done
        fi
        rm -f "$pidfile"
    done
}

write_conf() {
    local host node_line cpus mem
    host=$(hostname -s)
    # `slurmd -C` prints the node line SLURM itself detects (CPUs, sockets, cores, threads, RealMemory).
    node_line=$(slurmd -C | head -n1)
    cpus=$(sed -n 's/.*CPUs=\([0-9]*\).*/\1/p' <<<"$node_line")
    [[ -n $cpus ]] || cpus=$(nproc)
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$node_line")
    [[ -n $mem ]] || mem=$(awk '/MemTotal/ {print int($2/1024)}' /proc/meminfo)
    # Leave some memory to the OS so that jobs asking for "all" of it still fit.
    mem=$(( mem > 2048 ? mem - 1024 : mem ))
    node_line=$(sed -e 's/RealMemory=[0-9]*//' -e 's/UpTime=.*//' <<<"$node_line")
    mkdir -p "$(dirname "$SLURM_CONF")"
    cat >"$SLURM_CONF.tmp" <<EOF
# Written by tests/slurm/start-local-slurm.sh: a one-node test cluster on $host.
ClusterName=local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation=$STATE/ctld
SlurmdSpoolDir=$STATE/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
SlurmctldPort=6817
SlurmdPort=6818
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
JobRequeue=1
# Finished jobs stay visible to squeue for 5 minutes: the executor polls with squeue (no sacct database).
MinJobAge=300
KillWait=30
InactiveLimit=0
SlurmdTimeout=300
$node_line RealMemory=$mem State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
EOF
    mv "$SLURM_CONF.tmp" "$SLURM_CONF"
    log "wrote $SLURM_CONF (node $host: $cpus CPUs, ${mem} MB)"
}

start_daemons() {
    [[ $(id -u) -eq 0 ]] || die "must run as root (it starts munged, slurmctld and slurmd)"
    for tool in munged slurmctld slurmd sinfo scontrol; do
        command -v "$tool" >/dev/null || die "$tool not found: install slurm-wlm and munge (or run with --install)"
    done
    mkdir -p "$STATE"/{ctld,d,run,log}
    if pid_alive "$STATE/run/slurmctld.pid" && pid_alive "$STATE/run/slurmd.pid" && scontrol ping >/dev/null 2>&1; then
        log "already running"
    else
        stop_daemons
        write_conf

        # munge: a key shared by every node (here one); created once.
        if [[ ! -s /etc/munge/munge.key ]]; then
            mkdir -p /etc/munge
            if command -v mungekey >/dev/null; then mungekey --create --keyfile=/etc/munge/munge.key
            else dd if=/dev/urandom bs=1 count=1024 of=/etc/munge/munge.key status=none; fi
        fi
        chmod 400 /etc/munge/munge.key
        mkdir -p /run/munge /var/log/munge /var/lib/munge
        if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
            log "starting munged"
            munged --force --pid-file="$STATE/run/munged.pid"
            for _ in $(seq 50); do munge -n 2>/dev/null | unmunge >/dev/null 2>&1 && break; sleep 0.1; done
        fi
        munge -n | unmunge >/dev/null || die "munge does not work (see /var/log/munge/munged.log)"

        log "starting slurmctld and slurmd (logs in $STATE/log)"
        # -c: a fresh cluster. Without it slurmctld restores the jobs saved in $STATE by an earlier run
        # (a machine image taken while jobs were queued brings them back), and a restored job that runs
        # holds a CPU and memory that the tests' jobs then wait for.
        slurmctld -c -f "$SLURM_CONF"
        for _ in $(seq 100); do scontrol ping >/dev/null 2>&1 && break; sleep 0.1; done
        slurmd -f "$SLURM_CONF"
    fi

    local deadline=$((SECONDS + TIMEOUT)) state=""
    while ((SECONDS < deadline)); do
        state=$(node_state)
        case $state in
            idle | mixed | allocated) break ;;
            down* | drain* | fail*) scontrol update nodename="$(hostname -s)" state=resume 2>/dev/null || true ;;
        esac
        sleep 1
    done
    case $state in
        idle | mixed | allocated) ;;
        *) tail -n 20 "$STATE/log/slurmctld.log" "$STATE/log/slurmd.log" >&2 || true
           die "node not ready after ${TIMEOUT}s (state: ${state:-unknown})" ;;
    esac
    sinfo
    log "ready (SLURM_CONF=$SLURM_CONF)"
}

install=0
cmd=start
for arg in "$@"; do
    case $arg in
        --install) install=1 ;;
        start | stop | status) cmd=$arg ;;
        -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
        *) die "unknown argument: $arg (try --help)" ;;
    esac
done

case $cmd in
    start)
        ((install)) && install_packages
        start_daemons ;;
    stop) stop_daemons ;;
    status) scontrol ping && sinfo ;;
esac
