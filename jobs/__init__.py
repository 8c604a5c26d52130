"""Floor 5: stages as submitit jobs (Slurm or this machine), hand-written SBATCH files, a one-node Slurm.

``jobs.submit`` turns a stage and its config into a job; ``jobs.wait`` waits for jobs without
hanging; ``local_slurm.sh`` starts a one-node Slurm for CI; ``*.SBATCH`` are for submitting by hand.
"""
