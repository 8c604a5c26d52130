"""The stage registry: every stage declared once, for the CLI, the job wrapper and the pipeline to read.

A declaration names the stage, says what it does (the help text), where its ``run`` function lives
(an import path, imported only when the stage runs, so ``main.py --help`` never loads torch), what
its job asks the scheduler for, and its command-line flags with the config setting each one sets.
``main.py <stage>``, ``main.py submit <stage>``, ``jobs.stage_job.StageJob`` and the resources of its
job are all derived from it.

Adding a stage: write ``stages/<name>.py`` with ``run(cfg)`` (``run(cfg, shard=(i, n))`` when it is
sharded), then declare it below with one ``Stage(...)`` in ``BUILTIN``.  Code outside this package
(a plug-in, a test) calls ``register(Stage(...))`` in the module that defines the run function, so
that importing that module inside a job declares the stage there too.

What ``run`` returns must pickle (it is a job's result); a ``Path`` is printed by the CLI as
``wrote <path>`` and returned from a job as a string.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

from core.imports import import_named

if TYPE_CHECKING:
    from core.config import Config, SlurmConfig

# A stage run on its own (the CLI, a single job) is shard 0 of 1.
WHOLE = (0, 1)


@dataclass(frozen=True)
class Resources:
    """What a stage's job asks for; the numbers come from the config's ``slurm:`` section."""

    description: str
    # True: slurm.nodes x slurm.tasks_per_node tasks (one DDP rank each), as configured.
    # False: one process on one node.
    distributed: bool
    # GPUs per node at most; None = slurm.gpus_per_node as configured.
    max_gpus: int | None

    def request(self, slurm: SlurmConfig) -> dict[str, int]:
        """``nodes``, ``tasks_per_node``, ``gpus_per_node`` for submitit."""
        gpus = slurm.gpus_per_node if self.max_gpus is None else min(slurm.gpus_per_node, self.max_gpus)
        if self.distributed:
            return {"nodes": slurm.nodes, "tasks_per_node": slurm.tasks_per_node, "gpus_per_node": gpus}
        return {"nodes": 1, "tasks_per_node": 1, "gpus_per_node": gpus}


AS_CONFIGURED = Resources("the slurm section's nodes, tasks per node and GPUs per node", True, None)
ONE_GPU = Resources("one process on at most one GPU (none when slurm.gpus_per_node is 0)", False, 1)
NO_GPU = Resources("one process, no GPU", False, 0)


@dataclass(frozen=True)
class Arg:
    """One command-line flag of a stage and the config setting it overrides (``--split`` -> predict.split)."""

    flag: str
    key: str
    help: str
    type: Callable[[str], Any] = str
    # True: the flag may be given more than once; once, it sets the setting to its value, more often
    # to the list of the values (``--checkpoint a.pt --checkpoint b.pt`` -> predict.checkpoint=[a.pt, b.pt]).
    repeat: bool = False

    @property
    def dest(self) -> str:
        """The argparse attribute name: ``--max-videos`` -> ``max_videos``."""
        return self.flag.lstrip("-").replace("-", "_")


@dataclass(frozen=True)
class Stage:
    """One stage, declared once.  Plain data: a job pickles it and resolves ``run`` where it runs."""

    name: str
    help: str
    run: str  # "package.module:function", imported when the stage runs
    resources: Resources
    args: tuple[Arg, ...] = ()
    # True: the CLI requires --config (train has no checkpoint to read a config from).
    config_required: bool = False
    # The config setting holding a shard count ("predict.shards"): the stage then runs as a job array of
    # that many tasks, each called as run(cfg, shard=(i, n)), and the CLI takes --shard i/n.  Empty: whole.
    shards: str = ""
    # The stage that joins the shards of an array of this stage (merge, for predict); empty: none.
    join: str = ""
    # Added to the stage's help where it is submitted as a job (main.py submit <stage>).
    job_help: str = field(default="", compare=False)

    def flag_keys(self) -> dict[str, str]:
        """{argparse attribute: config setting} of the stage's flags."""
        return {arg.dest: arg.key for arg in self.args}

    def function(self) -> Callable[..., Any]:
        """The run function, imported now (not when the stage was declared)."""
        return import_named(self.run, f"stage {self.name!r}")

    def shard_count(self, cfg: Config) -> int:
        """How many shards (array tasks) ``cfg`` asks for: 1 for a stage that is not sharded."""
        if not self.shards:
            return 1
        section, _, key = self.shards.partition(".")
        return int(getattr(getattr(cfg, section), key))


_CHECKPOINT_HELP = ("checkpoint (default: runs/<name>/best.pt); repeat it, or give a quoted glob such as "
                    "'runs/sweep/*/best.pt', for an ensemble of their mean")


def glob_list(text: str) -> list[str]:
    """A flag value for a list setting of one entry (``--runs 'runs/a/*'`` -> compare.runs=['runs/a/*']):
    as a YAML list of a quoted string, a glob's ``*`` or ``[`` is never read as YAML syntax."""
    return [text]

BUILTIN = (
    Stage("train", "train a model (resumes from runs/<name>/last.pt)", "stages.train:run", AS_CONFIGURED,
          config_required=True, job_help="requeued at its time limit and resumed"),
    Stage("predict", "predict the future frames of a split into one .npy", "stages.predict:run", ONE_GPU,
          args=(Arg("--checkpoint", "predict.checkpoint", _CHECKPOINT_HELP, repeat=True),
                Arg("--split", "predict.split", "split to predict (default: predict.split)"),
                Arg("--out", "predict.out", "output .npy (default: runs/<name>/preds/<split>.npy)")),
          shards="predict.shards", join="merge"),
    Stage("merge", "join prediction shards into one .npy", "stages.predict:merge", NO_GPU,
          args=(Arg("--out", "predict.out", "the merged .npy (shards are named after it)"),
                Arg("--shards", "predict.shards", "number of shards", int))),
    Stage("convert", "write a prediction .npy as PNG frames", "stages.convert:run", NO_GPU,
          args=(Arg("--npy", "predict.out", "prediction array (default: predict.out)"),
                Arg("--out", "convert.out", "PNG folder (default: convert.out)")),
          job_help="merges prediction shards first when there are newer ones"),
    Stage("evaluate", "per-lead-time metrics, plots and samples on a labeled split", "stages.evaluate:run",
          ONE_GPU,
          args=(Arg("--checkpoint", "predict.checkpoint", _CHECKPOINT_HELP, repeat=True),
                Arg("--split", "evaluate.split", "split to score (default: evaluate.split, val)"),
                Arg("--out", "evaluate.out", "report folder (default: runs/<name>/eval/<split>)"),
                Arg("--max-videos", "evaluate.max_videos", "evaluate at most this many videos", int))),
)

# Stages outside the pipeline: tools that read a config and run on their own, or as a job.
TOOLS = (
    Stage("lr-find", "learning-rate range test: the loss over an exponentially rising lr, a plot and a "
          "suggested lr (never touches the run folder)", "stages.lr_find:run", ONE_GPU,
          args=(Arg("--steps", "lr_find.steps", "steps of the sweep", int),
                Arg("--start-lr", "lr_find.start_lr", "first learning rate", float),
                Arg("--end-lr", "lr_find.end_lr", "last learning rate", float),
                Arg("--out", "lr_find.out", "folder for lr_find.png and lr_find.json "
                    "(default: <run.out_dir>/lr-find/<run.name>)")),
          config_required=True),
    Stage("calibrate", "fit a per-pixel predictive interval for a checkpoint or ensemble (an ensemble's spread or "
          "a scale head, rescaled per lead time split-conformally) whose coverage holds on held-out videos",
          "stages.calibrate:run", ONE_GPU,
          args=(Arg("--checkpoint", "predict.checkpoint", _CHECKPOINT_HELP, repeat=True),
                Arg("--split", "calibrate.split", "labeled split to fit the coverage on (default: calibrate.split, val)"),
                Arg("--method", "calibrate.method", "spread (an ensemble's) or scale_head"),
                Arg("--out", "calibrate.out", "calibration file (default: runs/<name>/calibration.pt; an "
                    "ensemble's in runs/ensembles/<name>/)"))),
    Stage("compare", "evaluate runs' best.pt (or reuse their reports) and tabulate them: mean +/- std "
          "over seeds per setting, CSV, Markdown and a plot", "stages.compare:run", ONE_GPU,
          args=(Arg("--runs", "compare.runs", "run folders, a quoted glob such as 'runs/sweep/*'", glob_list),
                Arg("--out", "compare.out", "folder for the tables and the plot (default: <runs' folder>/compare)"),
                Arg("--split", "evaluate.split", "split to score (default: evaluate.split, val)"),
                Arg("--max-videos", "evaluate.max_videos", "evaluate at most this many videos", int)),
          job_help="the last job of `submit sweep`"),
)

_REGISTRY: dict[str, Stage] = {}


def register(stage: Stage) -> Stage:
    """Declare ``stage``; declaring the same stage again (a module imported twice) changes nothing."""
    known = _REGISTRY.get(stage.name)
    if known is not None and known != stage:
        raise ValueError(f"stage {stage.name!r} is already declared differently: {known}")
    _REGISTRY[stage.name] = stage
    return stage


def stages() -> tuple[Stage, ...]:
    """Every declared stage, in declaration order."""
    return tuple(_REGISTRY.values())


def get(name: str) -> Stage:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown stage {name!r}; declared: {', '.join(_REGISTRY)}") from None


def run_stage(stage: Stage | str, cfg: Config, shard: tuple[int, int] = WHOLE) -> Any:
    """Call the stage's ``run`` on ``cfg`` with its path settings expanded (core/paths.py): with ``shard``
    when it is sharded (else ``shard`` must be whole)."""
    stage = get(stage) if isinstance(stage, str) else stage
    function = stage.function()
    from core.paths import expand_config

    # ${VAR} in the path settings, from this process's environment (inside a job: the compute node's);
    # the expanded copy still writes the settings as written (config.yaml, checkpoints).
    cfg = expand_config(cfg)
    if stage.shards:
        return function(cfg, shard=tuple(shard))
    if tuple(shard) != WHOLE:
        raise ValueError(f"stage {stage.name!r} is not sharded; got shard {shard}")
    return function(cfg)


for _stage in (*BUILTIN, *TOOLS):
    register(_stage)
