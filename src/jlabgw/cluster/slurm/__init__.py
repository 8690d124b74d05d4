"""SLURM: sbatch/squeue/scancel (client) and the batch script (batch)."""
