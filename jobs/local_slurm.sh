#!/usr/bin/env bash
# Install (apt) and start a one-node Slurm + munge on a Debian machine, for CI and for trying the
# jobs layer on a laptop.  Idempotent: run it again and it only does what is not done yet.
#
#   sudo jobs/local_slurm.sh          # install if needed, configure, start, wait until the node is idle
#   sudo jobs/local_slurm.sh stop     # stop slurmctld, slurmd and munged (by the pids they recorded)
#   jobs/local_slurm.sh status        # sinfo / squeue
#
# Environment knobs:
#   SLURM_WAIT_S         seconds to wait for the node to become idle (default 90)
#   SLURM_CRED_EXPIRE_S  credential lifetime, which is also how long a requeued job waits before it
#                        may start again (Slurm's default is 120 s; 10 here so requeue tests are quick)
#   FORCE_CONFIG=1       overwrite an /etc/slurm/slurm.conf that this script did not write
#
# No systemd needed (CI containers often have none): the daemons are started directly.
# The cluster has no accounting daemon (slurmdbd); `sacct` says so, which is harmless.
set -euo pipefail

MODE="${1:-start}"
WAIT_S="${SLURM_WAIT_S:-90}"
CRED_EXPIRE_S="${SLURM_CRED_EXPIRE_S:-10}"
CONF_DIR=/etc/slurm
CONF="$CONF_DIR/slurm.conf"
MARKER="# written by framecast jobs/local_slurm.sh"
LOG_DIR=/var/log/slurm
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid

say() { echo "local_slurm: $*" >&2; }
die() { say "error: $*"; exit 1; }

need_root() {
    [ "$(id -u)" -eq 0 ] || die "$1 needs root (run it with sudo, or as root in CI)"
}

node_name() { hostname -s; }

# State of our node as sinfo prints it (idle, mixed, allocated, down*, drained ...), empty if unreachable.
node_state() {
    timeout 10 sinfo -h -N -n "$(node_name)" -o "%T" 2>/dev/null | head -n 1 || true
}

node_usable() {
    case "$(node_state)" in
        idle | mixed | allocated | completing) return 0 ;;
        *) return 1 ;;
    esac
}

# True when the pid in file $1 names a live process.
pid_alive() {
    [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null
}

install_packages() {
    if command -v slurmctld >/dev/null && command -v slurmd >/dev/null \
        && command -v munged >/dev/null && command -v sbatch >/dev/null; then
        return
    fi
    need_root "installing slurm-wlm and munge"
    command -v apt-get >/dev/null || die "apt-get not found: this script installs Slurm on Debian/Ubuntu only"
    say "installing slurm-wlm and munge with apt-get (about a minute)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q
    apt-get install -y -q slurm-wlm munge
}

munge_answers() {
    timeout 10 munge -n 2>/dev/null | timeout 10 unmunge >/dev/null 2>&1
}

start_munge() {
    if munge_answers; then
        return
    fi
    need_root "starting munged"
    install -d -o munge -g munge -m 0700 /etc/munge /var/log/munge
    install -d -o munge -g munge -m 0711 /var/lib/munge
    install -d -o munge -g munge -m 0755 /run/munge
    if [ ! -s /etc/munge/munge.key ]; then
        say "creating /etc/munge/munge.key"
        dd if=/dev/urandom of=/etc/munge/munge.key bs=1024 count=1 status=none
    fi
    chown munge:munge /etc/munge/munge.key
    chmod 0400 /etc/munge/munge.key
    say "starting munged"
    runuser -u munge -- /usr/sbin/munged
    for _ in $(seq 20); do
        if munge_answers; then return; fi
        sleep 0.5
    done
    tail -n 20 /var/log/munge/munged.log >&2 2>/dev/null || true
    die "munged does not answer (munge -n | unmunge fails); see /var/log/munge/munged.log"
}

# Print the slurm.conf this machine should have on stdout.
render_config() {
    local host cpus mem_kb real_mb
    host="$(node_name)"
    cpus="$(nproc)"
    # RealMemory must not exceed what slurmd finds, or the node is drained: 90% of MemAvailable,
    # measured once (a config we wrote before keeps its value, so re-runs change nothing).
    real_mb="$(sed -n "s/^NodeName=$host .*RealMemory=\([0-9]*\).*/\1/p" "$CONF" 2>/dev/null || true)"
    if [ -z "$real_mb" ]; then
        mem_kb="$(awk '/^MemAvailable:/ {print $2}' /proc/meminfo)"
        real_mb=$(( mem_kb / 1024 * 9 / 10 ))
    fi
    cat <<CONF_END
$MARKER for a one-node test cluster.
ClusterName=local
SlurmctldHost=$host
AuthType=auth/munge
# cred_expire is also how long a requeued job waits before it may start again (default 120 s).
AuthInfo=cred_expire=$CRED_EXPIRE_S
SlurmUser=root
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
MailProg=/bin/true
StateSaveLocation=/var/spool/slurmctld
SlurmdSpoolDir=/var/spool/slurmd
SlurmctldPidFile=$CTLD_PID
SlurmdPidFile=$SLURMD_PID
SlurmctldLogFile=$LOG_DIR/slurmctld.log
SlurmdLogFile=$LOG_DIR/slurmd.log
# Requeue: submitit answers the time-limit / preemption signal with 'scontrol requeue <id>'.
JobRequeue=1
# A node that went down (e.g. slurmd restarted) returns to service by itself.
ReturnToService=2
# Seconds between SIGTERM and SIGKILL when a job is ended early (scancel, requeue, time limit).
# Short: the stages write every file atomically, so a kill loses nothing but time.
KillWait=2
# Finished jobs stay visible to squeue this long (the jobs layer reads their end state there).
MinJobAge=600
SchedulerType=sched/backfill
# Look at pending jobs every few seconds (defaults 60 s / 30 s): a requeued job becomes eligible
# when its begin time passes, which no event announces, so it would otherwise idle up to a minute.
SchedulerParameters=sched_interval=5,bf_interval=5
NodeName=$host CPUs=$cpus RealMemory=$real_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
CONF_END
}

# Write slurm.conf when it is missing or different; succeed only when it changed.
write_config() {
    local new host
    host="$(node_name)"
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF" && [ "${FORCE_CONFIG:-0}" != 1 ]; then
        die "$CONF exists and was not written by this script; not touching it (FORCE_CONFIG=1 overwrites it)"
    fi
    new="$(render_config)"
    if [ -f "$CONF" ] && [ "$new" = "$(cat "$CONF")" ]; then
        return 1
    fi
    need_root "writing $CONF"
    # DDP ranks find rank 0 by the node name (MASTER_ADDR): it has to resolve.
    if ! getent hosts "$host" >/dev/null; then
        say "adding $host to /etc/hosts (it did not resolve)"
        echo "127.0.1.1 $host" >> /etc/hosts
    fi
    install -d -m 0755 "$CONF_DIR" "$LOG_DIR" /var/spool/slurmctld /var/spool/slurmd
    say "writing $CONF ($host, $(nproc) CPUs)"
    printf '%s\n' "$new" > "$CONF.tmp"
    mv "$CONF.tmp" "$CONF"
    return 0
}

show_logs() {
    local f
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log"; do
        if [ -f "$f" ]; then
            echo "---- last lines of $f" >&2
            tail -n 25 "$f" >&2
        fi
    done
    echo "---- sinfo -N -l" >&2
    timeout 10 sinfo -N -l >&2 || true
}

start_daemons() {
    if ! pid_alive "$CTLD_PID"; then
        need_root "starting slurmctld"
        say "starting slurmctld"
        /usr/sbin/slurmctld || { show_logs; die "slurmctld did not start"; }
    fi
    if ! pid_alive "$SLURMD_PID"; then
        need_root "starting slurmd"
        say "starting slurmd"
        /usr/sbin/slurmd || { show_logs; die "slurmd did not start"; }
    fi
}

wait_idle() {
    local deadline=$(( SECONDS + WAIT_S ))
    while [ $SECONDS -lt $deadline ]; do
        if node_usable; then
            say "node $(node_name) is $(node_state); Slurm is ready"
            return 0
        fi
        case "$(node_state)" in
            down* | drain* | fail*)
                # e.g. left down by an earlier run: bring it back (ReturnToService covers most cases).
                scontrol update NodeName="$(node_name)" State=RESUME >/dev/null 2>&1 || true ;;
        esac
        sleep 1
    done
    show_logs
    die "node $(node_name) not idle after ${WAIT_S}s (state: '$(node_state)')"
}

# Stop slurmctld and slurmd, plus the daemons whose pid files are given as arguments.
stop_daemons() {
    local pidfile pid
    need_root "stopping Slurm"
    if pid_alive "$CTLD_PID"; then
        say "stopping slurmctld and slurmd (scontrol shutdown)"
        timeout 20 scontrol shutdown >/dev/null 2>&1 || true
    fi
    # Whatever is still up after a grace period: end it by the pid it recorded, never by name.
    for pidfile in "$SLURMD_PID" "$CTLD_PID" "$@"; do
        pid="$(cat "$pidfile" 2>/dev/null || true)"
        [ -n "$pid" ] || continue
        if ! wait_gone "$pid"; then
            say "stopping pid $pid from $pidfile"
            kill "$pid" 2>/dev/null || true
            wait_gone "$pid" || die "pid $pid from $pidfile is still running"
        fi
    done
}

# Wait up to 10 s for process $1 to exit; fail if it is still there.
wait_gone() {
    for _ in $(seq 20); do
        kill -0 "$1" 2>/dev/null || return 0
        sleep 0.5
    done
    return 1
}

case "$MODE" in
    start)
        install_packages
        if write_config && pid_alive "$CTLD_PID"; then
            say "configuration changed: restarting slurmctld and slurmd"
            stop_daemons
        fi
        if node_usable; then
            say "already running: node $(node_name) is $(node_state)"
            exit 0
        fi
        start_munge
        start_daemons
        wait_idle
        ;;
    stop)
        stop_daemons "$MUNGE_PID"
        ;;
    status)
        sinfo -N -l
        squeue
        ;;
    *)
        die "unknown mode '$MODE' (use start, stop or status)"
        ;;
esac
