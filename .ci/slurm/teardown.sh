#!/usr/bin/env bash
# Stop the single-node SLURM started by setup.sh: cancel all jobs, stop slurmctld and slurmd
# and (unless --keep-munge) munged. Idempotent; processes are found through their pid files.
set -euo pipefail

SLURM_CONF=${SLURM_CONF:-/etc/slurm/slurm.conf}
export SLURM_CONF
KEEP_MUNGE=0
[ "${1:-}" = "--keep-munge" ] && KEEP_MUNGE=1

log() { echo "[slurm-teardown] $*"; }

if [ -f "$SLURM_CONF" ] && ! grep -qF "managed by .ci/slurm/setup.sh" "$SLURM_CONF"; then
    echo "[slurm-teardown] $SLURM_CONF was not written by setup.sh; leaving SLURM alone" >&2
    exit 1
fi

pid_of() {  # pid_of PIDFILE NAME: pid in PIDFILE if that process is alive and is NAME
    local pid
    [ -f "$1" ] || return 1
    pid=$(cat "$1" 2>/dev/null) || return 1
    [ -n "$pid" ] && [ -r "/proc/$pid/comm" ] && [ "$(cat "/proc/$pid/comm")" = "$2" ] &&
        echo "$pid"
}

# stop PIDFILE NAME: SIGTERM, wait up to 20 s, then SIGKILL.
stop() {
    local pid i
    pid=$(pid_of "$1" "$2") || return 0
    log "stopping $2 (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || return 0
    for ((i = 0; i < 40; i++)); do
        kill -0 "$pid" 2>/dev/null || { rm -f "$1"; return 0; }
        sleep 0.5
    done
    log "$2 (pid $pid) ignored SIGTERM; killing it"
    kill -KILL "$pid" 2>/dev/null || true
    rm -f "$1"
}

if pid_of /run/slurmctld.pid slurmctld >/dev/null; then
    jobs=$(squeue -h -o %i 2>/dev/null || true)
    if [ -n "$jobs" ]; then
        log "cancelling jobs: $(echo $jobs)"
        # shellcheck disable=SC2086
        scancel $jobs || true
        for ((i = 0; i < 30; i++)); do
            [ -z "$(squeue -h -t R,PD,CG -o %i 2>/dev/null)" ] && break
            sleep 0.5
        done
    fi
fi
stop /run/slurmd.pid slurmd
stop /run/slurmctld.pid slurmctld
if [ "$KEEP_MUNGE" -eq 0 ]; then
    stop /run/munge/munged.pid munged
fi
# Job steps (slurmstepd) left behind by a killed slurmd would hold the node's resources.
for pid in $(pgrep -x slurmstepd || true); do
    log "killing stray slurmstepd (pid $pid)"
    kill -KILL "$pid" 2>/dev/null || true
done
exit 0
