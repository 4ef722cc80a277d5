# Shared body of pretrain.sbatch and finetune.sbatch (sourced by them, not run by itself).
#
#   physfm_launch VERB ARGS...
#
# runs `$PHYSFM VERB --out $RUN_DIR ARGS... <device overrides>` as one srun task per GPU on every node
# of the job.  Ranks, world size and the rendezvous come from Slurm through Lightning's SLURMEnvironment
# (SLURM_PROCID/LOCALID/NODEID; MASTER_ADDR = first node of SLURM_NODELIST, MASTER_PORT from the job
# id), so nothing here computes ranks.  The job's shape is whatever sbatch was given: the #SBATCH lines,
# overridden by command-line flags (sbatch --nodes=4 --gpus-per-node=8 --ntasks-per-node=8 ...).
#
# Environment (all optional; sbatch passes the submitting shell's environment to the job):
#   PHYSFM              the command (default `physfm`; from a checkout: "python -m physfm.cli")
#   PHYSFM_DEVICE       gpu (default): NCCL, one task per GPU | cpu: gloo on CPU nodes (tests, debugging)
#   RUN_DIR             run directory (default runs/VERB-$SLURM_JOB_ID).  A requeued job keeps its id,
#                       so it finds its own checkpoints there and resumes from the newest.
#   PHYSFM_MAX_REQUEUES how often a job may requeue itself after a stop signal (default 20)
#   NCCL_*              site settings (NCCL_SOCKET_IFNAME, NCCL_IB_HCA, ...) pass through untouched
#
# Stop and requeue: Slurm sends SIGUSR1 to every task 90 s before the time limit (#SBATCH
# --signal=USR1@90).  physfm finishes the current optimiser step, writes a checkpoint into
# RUN_DIR/checkpoints and exits with code 75; this script then runs `scontrol requeue`, and the job
# starts again later under the same id and resumes from that checkpoint (`resume: auto`).
#
# SIGTERM to the tasks (`scancel --signal=TERM`, a preemption's grace signal, a site's own tooling):
# physfm finishes the current step, writes a checkpoint and exits 143; this script says so and ends the job
# with that code, so it never looks completed.  Submitting the same command with the same RUN_DIR resumes.
# At a hard time limit Slurm also sends SIGTERM to srun, which then SIGKILLs the tasks (no checkpoint at
# that moment): the USR1@90 lead above is what saves ahead of the limit.  This script outlives its own
# SIGTERM (trap) to report either case, with srun's exit code (137 for killed tasks, never 0).

STOPPED_EXIT_CODE=75     # physfm.train.module.STOPPED_EXIT_CODE: stopped on SIGUSR1, requeue
TERMINATED_EXIT_CODE=143 # 128 + SIGTERM: stopped on SIGTERM (time limit, preemption, scancel)

physfm_die() { echo "physfm launch: error: $*" >&2; exit 2; }

physfm_launch() {
    local verb=${1:?physfm_launch needs a verb}; shift
    [ -n "${SLURM_JOB_ID:-}" ] || physfm_die "not inside a Slurm job: submit with sbatch"
    local physfm=${PHYSFM:-physfm}
    local device=${PHYSFM_DEVICE:-gpu}
    local run_dir=${RUN_DIR:-runs/$verb-$SLURM_JOB_ID}
    local nodes=${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}
    local per_node=${SLURM_NTASKS_PER_NODE:-1}
    local overrides=()

    case $device in
        gpu)
            local gpus=${SLURM_GPUS_ON_NODE:-${SLURM_GPUS_PER_NODE:-0}}
            gpus=${gpus##*:}  # "a100:8" → 8
            [ "$gpus" -gt 0 ] 2>/dev/null \
                || physfm_die "PHYSFM_DEVICE=gpu but the job has no GPUs (use --gpus-per-node=N or PHYSFM_DEVICE=cpu)"
            [ "$gpus" -eq "$per_node" ] \
                || physfm_die "one task per GPU: --ntasks-per-node=$per_node but $gpus GPU(s) per node"
            export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
            # A rank that dies makes the others fail their next collective instead of hanging until the
            # allocation runs out.
            export TORCH_NCCL_ASYNC_ERROR_HANDLING=${TORCH_NCCL_ASYNC_ERROR_HANDLING:-1}
            overrides=(strategy.accelerator=gpu strategy.process_group_backend=nccl)
            ;;
        cpu)
            export DS_ACCELERATOR=cpu  # DeepSpeed picks its accelerator once, at import
            overrides=(strategy.accelerator=cpu strategy.process_group_backend=gloo)
            ;;
        *) physfm_die "PHYSFM_DEVICE must be gpu or cpu, got '$device'" ;;
    esac
    export OMP_NUM_THREADS=${OMP_NUM_THREADS:-${SLURM_CPUS_PER_TASK:-1}}
    export PYTHONUNBUFFERED=1  # rank output reaches the job log as it happens, not at exit

    mkdir -p "$run_dir"
    echo "physfm launch: job $SLURM_JOB_ID (restart ${SLURM_RESTART_COUNT:-0}) $verb on $nodes node(s)" \
        "x $per_node task(s), device=$device, nodes ${SLURM_JOB_NODELIST:-?}, run dir $run_dir"
    local rc=0
    # SIGTERM would kill this shell at once (and its last word with it); srun forwards it to the tasks,
    # which stop after their step.  Record it and report once srun returns.
    local terminated=0
    trap 'terminated=1' TERM
    # Word splitting of $physfm is wanted ("python -m physfm.cli").  --cpus-per-task is repeated because
    # srun does not inherit it from sbatch (Slurm 22.05+).  Our overrides come last so they win.
    # shellcheck disable=SC2086
    srun --nodes="$nodes" --ntasks-per-node="$per_node" --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}" --label \
        $physfm "$verb" --out "$run_dir" "$@" "${overrides[@]}" || rc=$?

    if [ "$rc" -eq "$STOPPED_EXIT_CODE" ]; then
        local job=$SLURM_JOB_ID
        [ -z "${SLURM_ARRAY_JOB_ID:-}" ] || job=${SLURM_ARRAY_JOB_ID}_${SLURM_ARRAY_TASK_ID}
        if [ "${SLURM_RESTART_COUNT:-0}" -ge "${PHYSFM_MAX_REQUEUES:-20}" ]; then
            echo "physfm launch: stopped with a checkpoint; not requeueing (restarted ${SLURM_RESTART_COUNT} times)"
            return "$rc"
        fi
        echo "physfm launch: $verb stopped early with a checkpoint in $run_dir/checkpoints; requeueing job $job"
        scontrol requeue "$job" || { echo "physfm launch: scontrol requeue $job failed (job not requeueable?)" >&2
                                      return "$rc"; }
        return 0
    fi
    if [ "$rc" -eq "$TERMINATED_EXIT_CODE" ] || [ "$terminated" -eq 1 ]; then
        echo "physfm launch: $verb stopped by SIGTERM (time limit or preemption) with exit code $rc;" \
            "checkpoints in $run_dir/checkpoints: submit the same command with RUN_DIR=$run_dir to resume"
        [ "$rc" -ne 0 ] || rc=$TERMINATED_EXIT_CODE  # a signalled job never ends as completed
        return "$rc"
    fi
    echo "physfm launch: $verb exited with code $rc"
    return "$rc"
}
