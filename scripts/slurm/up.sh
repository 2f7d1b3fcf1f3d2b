#!/usr/bin/env bash
# Start a local SLURM cluster with two simulated nodes (n1, n2) for the SLURM tests.
# Safe to run twice: a cluster this script already started is left as it is.
# Everything lives under one folder (STARIA_SLURM_DIR, default <repo>/.slurm); down.sh stops
# exactly the processes recorded in <folder>/run/started.pids.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${STARIA_SLURM_DIR:-$repo/.slurm}
ctld_port=${STARIA_SLURM_PORT:-6817}
partition=${STARIA_SLURM_PARTITION:-local}
conf=$dir/slurm.conf
pids_file=$dir/run/started.pids
system_conf=/etc/slurm/slurm.conf
export SLURM_CONF=$conf

die() { echo "slurm-up: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (it starts slurmd/slurmctld as root and edits /etc/hosts)"

cluster_answers() { timeout 5 sinfo -h >/dev/null 2>&1; }

recorded_processes_alive() {
    [[ -s $pids_file ]] || return 1
    local name pid
    while read -r name pid; do
        [[ -r /proc/$pid/comm && $(cat "/proc/$pid/comm") == "$name" ]] || return 1
    done <"$pids_file"
}

if recorded_processes_alive && cluster_answers; then
    echo "slurm-up: cluster already running (pids in $pids_file)"
    sinfo -N
    exit 0
fi
if [[ -s $pids_file ]]; then
    echo "slurm-up: a previous cluster is partly running; stopping it first"
    bash "$here/down.sh"
fi

if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    echo "slurm-up: installing slurm-wlm and munge with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y -q slurm-wlm munge >/dev/null \
        || { apt-get update -q >/dev/null && apt-get install -y -q slurm-wlm munge >/dev/null; }
fi
[[ -s /etc/munge/munge.key ]] || runuser -u munge -- mungekey --create --keyfile=/etc/munge/munge.key

for node in n1 n2; do
    if ! getent hosts "$node" >/dev/null; then
        echo "127.0.0.1 n1 n2" >>/etc/hosts
        break
    fi
done

# A fresh cluster every time: no jobs left over from an earlier run, job ids restart at 1.
rm -rf "$dir/state" "$dir/spool" "$dir/run" "$dir/munge" "$dir/log"
mkdir -p "$dir/state" "$dir/spool/n1" "$dir/spool/n2" "$dir/run" "$dir/log" "$dir/munge"
chown munge:munge "$dir/munge"
chmod 0755 "$dir/munge"

mem_mb=$(awk '/^MemTotal:/ {print int($2 / 1024)}' /proc/meminfo)
sed -e "s|@DIR@|$dir|g" -e "s|@CTLD_PORT@|$ctld_port|g" \
    -e "s|@N1_PORT@|$((ctld_port + 1))|g" -e "s|@N2_PORT@|$((ctld_port + 2))|g" \
    -e "s|@MEM_MB@|$mem_mb|g" -e "s|@PARTITION@|$partition|g" \
    "$here/slurm.conf.in" >"$conf"

# Client commands (sinfo, sbatch, srun inside jobs) read /etc/slurm/slurm.conf unless SLURM_CONF
# is set; point it at this cluster when the machine has no configuration of its own.
if [[ ! -e $system_conf && ! -L $system_conf ]]; then
    mkdir -p "$(dirname "$system_conf")"
    ln -s "$conf" "$system_conf"
elif [[ $(readlink -f "$system_conf") != "$conf" ]]; then
    echo "slurm-up: $system_conf belongs to another cluster; use: export SLURM_CONF=$conf"
fi

start() {
    local name=$1 log=$2
    shift 2
    # setsid detaches the daemon from this shell's session and execs it, so $! is its pid.
    setsid "$@" >"$log" 2>&1 </dev/null &
    echo "$name $!" >>"$pids_file"
}

wait_for() {
    local what=$1 seconds=$2
    shift 2
    local deadline=$((SECONDS + seconds))
    until "$@"; do
        if ((SECONDS >= deadline)); then
            echo "slurm-up: $what not ready after ${seconds}s; last log lines:" >&2
            tail -n 20 "$dir"/log/*.log "$dir"/log/*.out 2>/dev/null >&2 || true
            bash "$here/down.sh" >&2
            exit 1
        fi
        sleep 0.2
    done
}

munge_socket=$dir/munge/munge.socket.2
start munged "$dir/log/munged.out" \
    setpriv --reuid=munge --regid=munge --init-groups \
    munged --foreground --socket="$munge_socket" --key-file=/etc/munge/munge.key \
    --pid-file="$dir/munge/munged.pid" --log-file="$dir/munge/munged.log" \
    --seed-file="$dir/munge/munged.seed"
munge_works() { munge -n -S "$munge_socket" 2>/dev/null | unmunge -S "$munge_socket" >/dev/null 2>&1; }
wait_for munged 10 munge_works

start slurmctld "$dir/log/slurmctld.out" slurmctld -D -c -f "$conf"
wait_for slurmctld 20 cluster_answers

start slurmd "$dir/log/slurmd.n1.out" slurmd -D -N n1 -f "$conf"
start slurmd "$dir/log/slurmd.n2.out" slurmd -D -N n2 -f "$conf"
both_idle() { [[ $(sinfo -h -N -t idle -o %N | sort -u | tr '\n' ' ') == "n1 n2 " ]]; }
wait_for "nodes n1 n2 idle" 60 both_idle

echo "slurm-up: cluster running; partition '$partition', config $conf, pids in $pids_file"
sinfo -N
