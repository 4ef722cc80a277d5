#!/usr/bin/env bash
# Shard large datasets in parallel on Slurm: N array tasks each run `physfm data shard --num-parts N
# --part I`, then one `physfm data merge SHARDS --num-parts N` runs only if every part succeeded.
#
#   scripts/slurm/shard.sh --parts N DIR... --out SHARDS [physfm data shard options]
#
# Datasets without a stats.yaml first get one `physfm data stats` job, so the parts do not each compute
# (and race to write) it.  Extra sbatch options for every job: SHARD_SBATCH_ARGS="--partition=cpu
# --time=2:00:00" or sbatch's own SBATCH_* variables (SBATCH_PARTITION, SBATCH_ACCOUNT, ...).
# Environment: PHYSFM (the command, default `physfm`).  Prints the job ids as key=value lines.
set -euo pipefail

die() { echo "shard.sh: error: $*" >&2; exit 2; }
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
PHYSFM=${PHYSFM:-physfm}

parts=""
shard_args=()
while [ $# -gt 0 ]; do
    case $1 in
        --parts) parts=${2:-}; shift 2 || die "--parts needs a number" ;;
        --parts=*) parts=${1#--parts=}; shift ;;
        *) shard_args+=("$1"); shift ;;
    esac
done
[[ "$parts" =~ ^[1-9][0-9]*$ ]] || die "usage: shard.sh --parts N DIR... --out SHARDS [shard options]"

# The dataset folders and --out among the `physfm data shard` arguments.
out="" datasets=()
for ((i = 0; i < ${#shard_args[@]}; i++)); do
    arg=${shard_args[i]}
    case $arg in
        --out) out=${shard_args[i + 1]:-}; i=$((i + 1)) ;;
        --out=*) out=${arg#--out=} ;;
        --n-input|--n-output|--stride|--max-shard-mb|--workers) i=$((i + 1)) ;;
        --num-parts|--part|--num-parts=*|--part=*) die "$arg is set by the array; give --parts N instead" ;;
        -*) ;;
        *) datasets+=("$arg") ;;
    esac
done
[ -n "$out" ] || die "--out SHARDS is required"
[ ${#datasets[@]} -gt 0 ] || die "give at least one dataset folder"
for d in "${datasets[@]}"; do [ -d "$d/data" ] || die "$d: not a The Well dataset folder (no data/)"; done

# shellcheck disable=SC2206  # word splitting of the extra options is wanted
extra=(${SHARD_SBATCH_ARGS:-})
quoted() { printf '%q ' "$@"; }

dependency=()
need_stats=()
for d in "${datasets[@]}"; do [ -f "$d/stats.yaml" ] || need_stats+=("$d"); done
if [ ${#need_stats[@]} -gt 0 ]; then
    cmd=""
    for d in "${need_stats[@]}"; do cmd+="$PHYSFM data stats $(quoted "$d")&& "; done
    stats_job=$(sbatch --parsable --job-name=physfm-stats "${extra[@]}" --wrap "${cmd}true")
    echo "stats_job=$stats_job"
    dependency=(--dependency="afterok:$stats_job" --kill-on-invalid-dep=yes)
fi

array_job=$(sbatch --parsable --array="0-$((parts - 1))" "${dependency[@]}" "${extra[@]}" \
    "$HERE/shard.sbatch" "${shard_args[@]}")
array_job=${array_job%%;*}  # "ID;cluster" on federated setups
echo "array_job=$array_job"
merge_job=$(sbatch --parsable --job-name=physfm-merge --dependency="afterok:$array_job" --kill-on-invalid-dep=yes \
    "${extra[@]}" --wrap "$PHYSFM data merge $(quoted "$out")--num-parts $parts")
echo "merge_job=$merge_job"
echo "shard.sh: $parts parts in array job $array_job; merge job $merge_job runs when every part succeeded" >&2
