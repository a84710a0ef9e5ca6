#!/usr/bin/env bash
# Multi-node HazeMatching training on SLURM: one `accelerate launch` per node, each starting one
# process per GPU. Submit with:  sbatch scripts/slurm_train.sh /path/to/data runs/my-run
#SBATCH --job-name=hazematching
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1          # one launcher per node; it starts GPUS_PER_NODE processes
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=32
#SBATCH --time=24:00:00
#SBATCH --output=%x-%j.out
set -euo pipefail

DATA=${1:?usage: sbatch scripts/slurm_train.sh DATA_DIR OUTPUT_DIR [extra trainer flags]}
OUTPUT=${2:?usage: sbatch scripts/slurm_train.sh DATA_DIR OUTPUT_DIR [extra trainer flags]}
shift 2
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
# not `| head -n 1`: under pipefail, head closing the pipe early kills the script with SIGPIPE (exit 141)
mapfile -t NODES < <(scontrol show hostnames "$SLURM_JOB_NODELIST")
MAIN_NODE=${NODES[0]}
MAIN_PORT=${MAIN_PORT:-29500}
NUM_PROCESSES=$((SLURM_NNODES * GPUS_PER_NODE))

# --resume-from-checkpoint latest makes a requeued or restarted job continue where it stopped.
srun --kill-on-bad-exit=1 bash -c "accelerate launch \
    --config_file accelerate_configs/multi_node.yaml \
    --num_machines $SLURM_NNODES \
    --num_processes $NUM_PROCESSES \
    --machine_rank \$SLURM_NODEID \
    --main_process_ip $MAIN_NODE \
    --main_process_port $MAIN_PORT \
    trainer/train.py \
    --data '$DATA' --output-dir '$OUTPUT' \
    --resume-from-checkpoint latest $*"
