"""Floor 5: stages as submitit jobs (Slurm or this machine), hand-written SBATCH files, a one-node Slurm.

``jobs.submit`` turns a stage (declared in ``stages.registry``) and its config into jobs, and chains the
pipeline; ``jobs.stage_job`` is the one wrapper every job runs; ``jobs.snapshot`` copies the code a
submission's jobs run; ``jobs.wait`` waits for jobs without hanging; ``local_slurm.sh`` starts a one-node
Slurm for CI; ``*.SBATCH`` are for submitting by hand.
"""
