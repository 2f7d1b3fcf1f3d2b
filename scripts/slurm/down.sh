#!/usr/bin/env bash
# Stop the local SLURM cluster that up.sh started: cancel its jobs, then stop exactly the
# processes recorded in <folder>/run/started.pids. Logs stay in <folder>/log for inspection.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
dir=${STARIA_SLURM_DIR:-$repo/.slurm}
conf=$dir/slurm.conf
pids_file=$dir/run/started.pids
system_conf=/etc/slurm/slurm.conf
export SLURM_CONF=$conf

if [[ ! -s $pids_file ]]; then
    echo "slurm-down: nothing recorded in $pids_file; nothing to stop"
    exit 0
fi

is_recorded_process() { [[ $(cat "/proc/$2/comm" 2>/dev/null) == "$1" ]]; }

# Job steps run under slurmstepd, which outlives slurmd: end the jobs while the daemons still run.
if timeout 5 squeue -h >/dev/null 2>&1; then
    mapfile -t jobs < <(squeue -h -o %A)
    if ((${#jobs[@]})); then
        scancel "${jobs[@]}" || true
        deadline=$((SECONDS + 30))
        while [[ -n $(squeue -h -t running,completing -o %A) ]] && ((SECONDS < deadline)); do
            sleep 0.5
        done
    fi
fi

mapfile -t records < <(tac "$pids_file")
for record in "${records[@]}"; do
    read -r name pid <<<"$record"
    if is_recorded_process "$name" "$pid"; then
        kill -TERM "$pid"
    fi
done
for record in "${records[@]}"; do
    read -r name pid <<<"$record"
    deadline=$((SECONDS + 15))
    while is_recorded_process "$name" "$pid" && ((SECONDS < deadline)); do
        sleep 0.2
    done
    if is_recorded_process "$name" "$pid"; then
        echo "slurm-down: $name ($pid) ignored SIGTERM; sending SIGKILL"
        kill -KILL "$pid"
    fi
done
rm -f "$pids_file"

if [[ -L $system_conf && $(readlink "$system_conf") == "$conf" ]]; then
    rm -f "$system_conf"
fi
echo "slurm-down: stopped ${#records[@]} processes"
