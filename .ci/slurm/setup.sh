#!/usr/bin/env bash
# Start a single-node SLURM on this machine (the test suite's tests/cluster/test_slurm.py).
#
# Idempotent: installs slurm-wlm and munge with apt-get when slurmctld is missing, writes
# $SLURM_CONF from slurm.conf.in (one node = this host, partition "debug"), creates the munge
# key if missing, starts munged, slurmctld and slurmd as plain daemons (no systemd) unless
# they already run, then waits until the node is idle and `srun hostname` works.
# Needs root. Stop everything with teardown.sh.
#
# SLURM_CI_CPUS=N declares the node with N CPUs instead of this machine's (`nproc --all`);
# above the real count slurm.conf gets SlurmdParameters=config_overrides, so that slurmd
# accepts the node (oversubscribed: e.g. benchmarks/multinode.py, a driver job and 4
# one-core worker jobs on a 2-core machine). Unset, the configuration is the default one.
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
STATE_DIR=${SLURM_CI_STATE_DIR:-/var/spool/slurm-ci}
LOG_DIR=${SLURM_CI_LOG_DIR:-/var/log/slurm-ci}
TIMEOUT=${SLURM_CI_TIMEOUT:-60}
MARKER="managed by .ci/slurm/setup.sh"
HOST=$(hostname -s)
MUNGE_KEY=/etc/munge/munge.key
MUNGE_PID=/run/munge/munged.pid
CTLD_PID=/run/slurmctld.pid
SLURMD_PID=/run/slurmd.pid
export SLURM_CONF

log() { echo "[slurm-setup] $*"; }

fail() {
    echo "[slurm-setup] ERROR: $*" >&2
    echo "[slurm-setup] config: $SLURM_CONF; logs: $LOG_DIR/slurmctld.log," \
        "$LOG_DIR/slurmd.log, /var/log/munge/munged.log" >&2
    for f in "$LOG_DIR/slurmctld.log" "$LOG_DIR/slurmd.log" /var/log/munge/munged.log; do
        if [ -f "$f" ]; then
            echo "----- last lines of $f -----" >&2
            tail -n 25 "$f" >&2
        fi
    done
    if command -v sinfo >/dev/null 2>&1; then
        echo "----- sinfo -----" >&2
        sinfo -N -o '%N %T %E' >&2 || true
    fi
    exit 1
}

# running PIDFILE NAME: the process in PIDFILE is alive and is NAME (not a recycled pid).
running() {
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ]
}

# wait_for SECONDS DESCRIPTION COMMAND...: retry COMMAND every half second.
wait_for() {
    local seconds=$1 what=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || fail "timed out after ${seconds}s waiting for $what"
        sleep 0.5
    done
}

[ "$(id -u)" -eq 0 ] || fail "must run as root (installs packages, starts daemons as SlurmUser=root)"

# --- 1. packages ---------------------------------------------------------------------------
if ! command -v slurmctld >/dev/null 2>&1 || ! command -v munged >/dev/null 2>&1; then
    log "installing slurm-wlm and munge with apt-get"
    t0=$SECONDS
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    # Debian's maintainer scripts try to start the services; without systemd that fails
    # noisily (or not at all). The daemons are started below, so forbid it while installing.
    policy=/usr/sbin/policy-rc.d
    created_policy=0
    if [ ! -e "$policy" ]; then
        printf '#!/bin/sh\nexit 101\n' >"$policy"
        chmod +x "$policy"
        created_policy=1
    fi
    apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null ||
        { [ "$created_policy" -eq 0 ] || rm -f "$policy"; fail "apt-get install failed"; }
    [ "$created_policy" -eq 0 ] || rm -f "$policy"
    log "installed in $((SECONDS - t0))s: $(slurmctld -V), munge $(dpkg-query -W -f '${Version}' munge)"
fi

# --- 2. configuration ----------------------------------------------------------------------
if [ -f "$SLURM_CONF" ] && ! grep -qF "$MARKER" "$SLURM_CONF"; then
    fail "$SLURM_CONF exists and was not written by this script; refusing to overwrite it" \
        "(set SLURM_CONF to another path)"
fi
real_cpus=$(nproc --all)
cpus=${SLURM_CI_CPUS:-$real_cpus}
[[ "$cpus" =~ ^[1-9][0-9]*$ ]] || fail "SLURM_CI_CPUS must be a positive integer (got '$cpus')"
if [ "$cpus" -gt "$real_cpus" ]; then
    # slurmd would mark a node with fewer CPUs than declared INVALID; trust slurm.conf.
    slurmd_parameters=(-e "s|@@SLURMD_PARAMETERS@@|SlurmdParameters=config_overrides|")
else
    slurmd_parameters=(-e "/@@SLURMD_PARAMETERS@@/d")
fi
mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
real_mem=$((mem_mb * 95 / 100))  # slurmd drains the node if RealMemory exceeds what it sees
mkdir -p "$(dirname "$SLURM_CONF")" "$STATE_DIR/slurmctld" "$STATE_DIR/slurmd" "$LOG_DIR"
new_conf=$(sed -e "s|@@MARKER@@|$MARKER|" -e "s|@@HOST@@|$HOST|g" -e "s|@@CPUS@@|$cpus|" \
    -e "s|@@MEMORY@@|$real_mem|" -e "s|@@STATE@@|$STATE_DIR|" -e "s|@@LOGDIR@@|$LOG_DIR|" \
    "${slurmd_parameters[@]}" "$HERE/slurm.conf.in")
conf_changed=0
if [ ! -f "$SLURM_CONF" ] || [ "$new_conf" != "$(cat "$SLURM_CONF")" ]; then
    printf '%s\n' "$new_conf" >"$SLURM_CONF"
    conf_changed=1
    log "wrote $SLURM_CONF (node $HOST: CPUs=$cpus of $real_cpus RealMemory=$real_mem)"
fi

# --- 3. munge ------------------------------------------------------------------------------
if [ ! -s "$MUNGE_KEY" ]; then
    log "creating $MUNGE_KEY"
    mkdir -p "$(dirname "$MUNGE_KEY")"
    if command -v mungekey >/dev/null 2>&1; then
        mungekey --create --keyfile="$MUNGE_KEY" --force
    else
        dd if=/dev/urandom of="$MUNGE_KEY" bs=1 count=1024 status=none
    fi
fi
# munged runs as the package's "munge" user (as the Debian service does), root otherwise.
MUNGE_USER=munge
id -u "$MUNGE_USER" >/dev/null 2>&1 || MUNGE_USER=root
mkdir -p /run/munge /var/lib/munge /var/log/munge
chown -R "$MUNGE_USER:" /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 0400 "$MUNGE_KEY"
chmod 0700 /etc/munge /var/lib/munge /var/log/munge
chmod 0755 /run/munge

t_daemons=$SECONDS
if ! running "$MUNGE_PID" munged; then
    log "starting munged"
    if [ "$MUNGE_USER" = root ]; then
        munged --force || fail "munged did not start"
    else
        runuser -u "$MUNGE_USER" -- munged || fail "munged did not start"
    fi
fi
wait_for 15 "munge to answer" bash -c 'munge -n | unmunge'

# --- 4. slurmctld and slurmd ---------------------------------------------------------------
if [ "$conf_changed" -eq 1 ] && running "$CTLD_PID" slurmctld; then
    log "configuration changed: restarting the running SLURM daemons"
    "$HERE/teardown.sh" --keep-munge
fi
if ! running "$CTLD_PID" slurmctld; then
    log "starting slurmctld"
    # -c: forget jobs and node states of an earlier run (stale dask-worker jobs).
    slurmctld -c || fail "slurmctld did not start"
fi
wait_for 30 "slurmctld to answer (scontrol ping)" bash -c 'scontrol ping | grep -q UP'
if ! running "$SLURMD_PID" slurmd; then
    log "starting slurmd"
    slurmd || fail "slurmd did not start"
fi

node_state() { sinfo -h -N -n "$HOST" -o %T 2>/dev/null | head -n 1; }
deadline=$((SECONDS + TIMEOUT))
resumed=0
while :; do
    state=$(node_state)
    case "$state" in
        idle | mixed | allocated) break ;;
        down* | drain* | drained*)
            # ReturnToService=2 normally brings the node back; nudge it once otherwise.
            if [ "$resumed" -eq 0 ] && [ $((deadline - SECONDS)) -lt $((TIMEOUT / 2)) ]; then
                log "node $HOST is $state; resuming it"
                scontrol update NodeName="$HOST" State=RESUME || true
                resumed=1
            fi
            ;;
    esac
    [ "$SECONDS" -lt "$deadline" ] || fail "node $HOST not idle after ${TIMEOUT}s (state: ${state:-unknown})"
    sleep 0.5
done
log "node $HOST is $state after $((SECONDS - t_daemons))s"

out=$(timeout 30 srun -N1 -n1 -t 1 hostname 2>&1) || fail "srun -N1 hostname failed: $out"
log "srun -N1 hostname -> $out"
log "SLURM ready in $((SECONDS - t_daemons))s ($(sinfo -V)); logs in $LOG_DIR"
