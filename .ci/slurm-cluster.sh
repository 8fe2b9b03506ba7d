#!/usr/bin/env bash
# A one-node SLURM cluster on localhost, from Debian's packages, for the tests marked `slurm`:
#   .ci/slurm-cluster.sh up      install (first time), configure and start munge, MariaDB, slurmdbd, slurmctld, slurmd
#   .ci/slurm-cluster.sh down    stop them (the packages stay installed)
# Idempotent. Where root or apt-get is missing it says why and exits 0: the slurm tests then skip.
# Accounting (slurmdbd on a private MariaDB) is what lets submitit see a failed or cancelled job (it asks sacct).
set -euo pipefail

STATE=${CVAE_SLURM_STATE:-/tmp/cvae-slurm}   # spool, logs, pids and the database: nothing outside but /etc/slurm
CONF_DIR=/etc/slurm
DB_PORT=33061
NODE=$(hostname -s)
PACKAGES=(slurm-wlm slurmdbd munge mariadb-server)

say() { echo "slurm-cluster: $*" >&2; }

MARK="# written by cvae's .ci/slurm-cluster.sh"

skip_reason() {
    [[ $(id -u) == 0 ]] || { echo "not root"; return; }
    command -v apt-get >/dev/null || { echo "no apt-get (not Debian/Ubuntu)"; return; }
    # a machine of a real cluster keeps its own configuration
    if [[ -f $CONF_DIR/slurm.conf ]] && ! grep -qxF "$MARK" "$CONF_DIR/slurm.conf"; then
        echo "$CONF_DIR/slurm.conf is this machine's own"
    fi
}

install_packages() {
    dpkg -s "${PACKAGES[@]}" >/dev/null 2>&1 && return
    say "installing ${PACKAGES[*]}"
    # no daemon may start from the packages' scripts: this script starts them, with its own configuration
    local policy=/usr/sbin/policy-rc.d ours=""
    [[ -e $policy ]] || { printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && ours=1; }
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${PACKAGES[@]}" >/dev/null
    [[ -z $ours ]] || rm -f "$policy"
}

write_config() {
    mkdir -p "$STATE"/{spool/ctld,spool/d,log,db} "$CONF_DIR"
    # More CPUs and memory than a small CI machine has (config_overrides lets slurmd accept that): two sweep
    # members and a 2-task DDP member fit side by side; nothing is enforced (task/none).
    cat >"$CONF_DIR/slurm.conf" <<EOF
$MARK
ClusterName=cvae
SlurmctldHost=$NODE(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SlurmdParameters=config_overrides
MpiDefault=none
ReturnToService=2
JobRequeue=1
KillWait=5
MinJobAge=600
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/slurmctld.pid
SlurmdPidFile=$STATE/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
JobAcctGatherType=jobacct_gather/none
JobCompType=jobcomp/none
NodeName=$NODE NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$CONF_DIR/slurmdbd.conf" <<EOF
$MARK
AuthType=auth/munge
DbdHost=$NODE
DbdAddr=127.0.0.1
SlurmUser=root
PidFile=$STATE/slurmdbd.pid
LogFile=$STATE/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$DB_PORT
StorageUser=root
StorageLoc=slurm_acct_db
EOF
    chmod 600 "$CONF_DIR/slurmdbd.conf"
}

running() { [[ -f $1 ]] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for <seconds> <what> <command...>
    local seconds=$1 what=$2
    shift 2
    for _ in $(seq "$((seconds * 2))"); do
        "$@" >/dev/null 2>&1 && return
        sleep 0.5
    done
    say "error: $what did not come up; see $STATE/log"
    exit 1
}

start_munge() {
    [[ -f /etc/munge/munge.key ]] || { mungekey --create --keyfile /etc/munge/munge.key && chown munge: /etc/munge/munge.key; }
    mkdir -p /run/munge && chown munge: /run/munge
    running /run/munge/munged.pid || runuser -u munge -- /usr/sbin/munged
    wait_for 10 munge munge -n
}

start_database() {
    # a private MariaDB in $STATE, on its own port: the machine's own database, if any, is left alone
    [[ -d $STATE/db/mysql ]] || mariadb-install-db --user=root --datadir="$STATE/db" --auth-root-authentication-method=normal >/dev/null
    running "$STATE/db.pid" || {
        mariadbd --user=root --datadir="$STATE/db" --port=$DB_PORT --bind-address=127.0.0.1 \
            --socket="$STATE/db.sock" --pid-file="$STATE/db.pid" --log-error="$STATE/log/mariadb.log" 2>>"$STATE/log/mariadb.log" &
        disown
    }
    wait_for 30 MariaDB mariadb --protocol=tcp -h 127.0.0.1 -P $DB_PORT -u root -e "select 1"
}

start_slurm() {
    running "$STATE/slurmdbd.pid" || slurmdbd
    wait_for 30 slurmdbd sacctmgr -n list cluster
    sacctmgr -i -n list cluster format=cluster | grep -qw cvae || sacctmgr -i add cluster cvae >/dev/null
    running "$STATE/slurmctld.pid" || slurmctld
    running "$STATE/slurmd.pid" || slurmd
    wait_for 60 "the node" bash -c "sinfo -h -N -o %t | grep -qx idle"
}

up() {
    local reason
    reason=$(skip_reason)
    if [[ -n $reason ]]; then
        say "skipped: $reason; the tests marked slurm will skip"
        return
    fi
    install_packages
    write_config
    start_munge
    start_database
    start_slurm
    say "up: $(sinfo -h -o '%P %D %t %c CPUs')"
}

stop_pid() {  # stop_pid <pid file>: TERM, then wait up to 20 s
    running "$1" || return 0
    local pid
    pid=$(cat "$1")
    kill "$pid"
    for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.5; done
    kill -9 "$pid" 2>/dev/null || true
}

down() {
    [[ $(id -u) == 0 ]] || return 0
    for daemon in slurmd slurmctld slurmdbd db; do stop_pid "$STATE/$daemon.pid"; done
    stop_pid /run/munge/munged.pid
    say "down"
}

case "${1:-}" in
up) up ;;
down) down ;;
*) echo "usage: $0 up|down" >&2 && exit 2 ;;
esac
