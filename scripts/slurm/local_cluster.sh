#!/usr/bin/env bash
# A real Slurm cluster on this host, for tests and for trying the sbatch scripts before a real cluster.
#
#   scripts/slurm/local_cluster.sh start [--nodes 1|2]   # install if needed, write slurm.conf, start daemons
#   scripts/slurm/local_cluster.sh status                # daemons, nodes, queue (exit 3 when not running)
#   scripts/slurm/local_cluster.sh stop                  # cancel jobs, stop the daemons it started, by PID
#
# Debian/Ubuntu as root: apt-get installs slurmctld/slurmd/slurm-client/munge (8 packages, ~8 s); no
# systemd and no cgroups are used (proctrack/linuxproc + task/none).  --nodes 2 fakes a two-node cluster
# with two slurmd daemons (n1, n2; both 127.0.0.1 in /etc/hosts), enough to run multi-node jobs on one
# machine.  Job outcomes go to $SLURM_BASE/log/jobcomp.log (one line per finished job, also after a
# requeue) because there is no accounting database (no sacct).
#
# Idempotent: `start` on a running cluster with the same layout does nothing; with another layout it
# restarts.  State, logs and pid files live under SLURM_BASE (default /tmp/physfm-slurm).  It writes
# /etc/slurm/slurm.conf (so plain sbatch/srun work) but refuses to replace one it did not write.
set -euo pipefail

BASE=${SLURM_BASE:-/tmp/physfm-slurm}
CONF=/etc/slurm/slurm.conf
MARK="# written by physfm scripts/slurm/local_cluster.sh"
MUNGE_PID=/run/munge/munged.pid

die() { echo "local_cluster: error: $*" >&2; exit 2; }
say() { echo "local_cluster: $*"; }

alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

running() { alive "$BASE/run/slurmctld.pid"; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "needs root (apt-get, munged as the munge user, slurmd); run with sudo, or in CI"
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
        && command -v munged >/dev/null; then
        return
    fi
    command -v apt-get >/dev/null || die "slurmctld/slurmd/munge are not installed and there is no apt-get"
    local pkgs=(slurmctld slurmd slurm-client munge)
    say "installing ${pkgs[*]} (apt-get, --no-install-recommends)"
    export DEBIAN_FRONTEND=noninteractive
    # A fresh container may have no package lists yet: update once, then retry.
    apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${pkgs[@]}" >/dev/null; } \
        || die "apt-get install ${pkgs[*]} failed"
}

start_munge() {
    if alive "$MUNGE_PID"; then
        return  # ours (pid copied below) or the system's: either way the key works for local daemons
    fi
    [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    install -d -o munge -g munge -m 0755 /run/munge
    runuser -u munge -- /usr/sbin/munged  # forks; writes $MUNGE_PID
    for _ in $(seq 40); do alive "$MUNGE_PID" && break; sleep 0.25; done
    alive "$MUNGE_PID" || die "munged did not start"
    cp "$MUNGE_PID" "$BASE/run/munged.pid"  # stop only a munged that this script started
    munge -n | unmunge >/dev/null || die "munge credential round trip failed"
}

write_conf() {
    local nodes=$1 host nodelines
    host=$(hostname -s)
    if [ -e "$CONF" ] && ! grep -qF "$MARK" "$CONF"; then
        die "$CONF exists and was not written by this script; move it away to use a local test cluster"
    fi
    if [ "$nodes" = 1 ]; then
        # The node as slurmd sees it, memory at 95 % so the node is not drained for having less.
        local hw mem
        hw=$(slurmd -C | head -1)
        mem=$(( $(sed -E 's/.*RealMemory=([0-9]+).*/\1/' <<<"$hw") * 95 / 100 ))
        nodelines="SlurmdSpoolDir=$BASE/spool/%n
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmdLogFile=$BASE/log/slurmd-%n.log
$(sed -E "s/RealMemory=[0-9]+/RealMemory=$mem/" <<<"$hw") State=UNKNOWN
PartitionName=debug Nodes=$host Default=YES MaxTime=INFINITE State=UP"
    else
        # Two slurmd on one host: distinct ports, one address; config_overrides lets each declare
        # more CPUs than the machine has (both share its cores).
        grep -qE '^[^#]*[[:space:]]n1([[:space:]]|$)' /etc/hosts \
            || echo "127.0.0.1 n1 n2  # physfm local_cluster.sh (fake nodes)" >>/etc/hosts
        nodelines="SlurmdSpoolDir=$BASE/spool/%n
SlurmdPidFile=$BASE/run/slurmd-%n.pid
SlurmdLogFile=$BASE/log/slurmd-%n.log
SlurmdParameters=config_overrides
NodeName=n1 NodeHostname=$host NodeAddr=127.0.0.1 Port=17001 CPUs=4 RealMemory=8000 State=UNKNOWN
NodeName=n2 NodeHostname=$host NodeAddr=127.0.0.1 Port=17002 CPUs=4 RealMemory=8000 State=UNKNOWN
PartitionName=debug Nodes=n1,n2 Default=YES MaxTime=INFINITE State=UP"
    fi
    mkdir -p /etc/slurm
    cat >"$CONF.tmp" <<EOF
$MARK (nodes=$nodes, base=$BASE)
ClusterName=physfm-local
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CryptoType=crypto/munge
# A requeued job may start again only after the step-credential lifetime (default 120 s); tests requeue.
AuthInfo=cred_expire=10
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc=$BASE/log/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
# Re-evaluate pending jobs every 2 s (default 60/30 s): a requeued job starts as soon as it is eligible.
SchedulerParameters=sched_interval=2,bf_interval=2
EnforcePartLimits=ALL
ReturnToService=2
MinJobAge=600
KillWait=10
MailProg=/bin/true
StateSaveLocation=$BASE/state
SlurmctldPidFile=$BASE/run/slurmctld.pid
SlurmctldLogFile=$BASE/log/slurmctld.log
$nodelines
EOF
    mv "$CONF.tmp" "$CONF"
}

node_names() { [ "$1" = 1 ] && hostname -s || echo "n1 n2"; }

wait_idle() {
    local want=$1 states
    for _ in $(seq 120); do
        states=$(sinfo -h -o '%T' 2>/dev/null | sort -u | tr '\n' ' ')
        [ "$states" = "idle " ] && [ "$(sinfo -h -N -o '%N' | sort -u | wc -l)" -eq "$want" ] && return 0
        sleep 0.25
    done
    echo "--- sinfo" >&2; sinfo >&2 || true
    tail -n 20 "$BASE"/log/*.log >&2 || true
    die "nodes did not become idle within 30 s (states: ${states:-none})"
}

cmd_start() {
    local nodes=2
    while [ $# -gt 0 ]; do
        case $1 in
            --nodes) nodes=${2:?--nodes needs 1 or 2}; shift 2 ;;
            --nodes=*) nodes=${1#--nodes=}; shift ;;
            *) die "start: unknown option $1 (usage: start [--nodes 1|2])" ;;
        esac
    done
    [ "$nodes" = 1 ] || [ "$nodes" = 2 ] || die "--nodes must be 1 or 2, got $nodes"
    if running && [ "$(cat "$BASE/nodes" 2>/dev/null)" = "$nodes" ]; then
        say "already running ($nodes node(s), base $BASE)"
        return 0
    fi
    need_root
    running && { say "running with another layout: restarting"; cmd_stop; }
    local t0=$SECONDS
    install_packages
    mkdir -p "$BASE"/{state,spool,log,run}
    start_munge
    write_conf "$nodes"
    echo "$nodes" >"$BASE/nodes"
    # -i: keep jobs and the job-id counter from the last run even if the node layout changed.
    slurmctld -i
    for node in $(node_names "$nodes"); do
        slurmd -N "$node"
    done
    wait_idle "$nodes"
    say "up: $nodes node(s) in $((SECONDS - t0)) s; conf $CONF, logs $BASE/log, job outcomes $BASE/log/jobcomp.log"
}

cmd_stop() {
    local pids=() f pid
    if running; then
        # Jobs would outlive slurmd (their slurmstepd are separate processes): cancel them first.
        local jobs
        jobs=$(squeue -h -o %i 2>/dev/null || true)
        if [ -n "$jobs" ]; then
            say "cancelling jobs: $(echo $jobs)"
            # shellcheck disable=SC2086
            scancel $jobs 2>/dev/null || true
            for _ in $(seq 60); do [ -z "$(squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.25; done
        fi
    fi
    for f in "$BASE"/run/slurmd-*.pid "$BASE/run/slurmctld.pid" "$BASE/run/munged.pid"; do
        [ -s "$f" ] || continue
        pid=$(cat "$f")
        if kill "$pid" 2>/dev/null; then
            say "stopped pid $pid ($(basename "$f" .pid))"
            pids+=("$pid")
        fi
        rm -f "$f"
    done
    for pid in "${pids[@]}"; do  # wait, so a following start finds the ports free
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    done
    rm -f "$BASE/nodes"
    [ ${#pids[@]} -gt 0 ] || say "nothing was running"
}

cmd_status() {
    local up=0 f
    for f in "$BASE"/run/slurmctld.pid "$BASE"/run/slurmd-*.pid "$BASE/run/munged.pid"; do
        [ -e "$f" ] || continue
        if alive "$f"; then echo "$(basename "$f" .pid): pid $(cat "$f")"; else echo "$(basename "$f" .pid): dead"; fi
    done
    if running; then
        up=1
        echo "nodes: $(cat "$BASE/nodes" 2>/dev/null || echo '?')"
        sinfo
        squeue
    fi
    [ "$up" = 1 ] || { say "not running (base $BASE)"; exit 3; }
}

case ${1:-} in
    start) shift; cmd_start "$@" ;;
    stop) cmd_stop ;;
    status) cmd_status ;;
    *) echo "usage: $0 start [--nodes 1|2] | stop | status" >&2; exit 2 ;;
esac
