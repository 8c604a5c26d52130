"""Layer 4: the pipeline stages as plain functions (``train.run``, ``predict.run``, ``evaluate.run``,
``convert.run``) that behave the same in a terminal, under torchrun, in a submitit job or an SBATCH file."""
