"""The framecast command line (``main.py`` and the installed ``framecast`` command are its entry
points): the parser, flags turned into config overrides, one command per stage of the registry.

The stage commands (train, predict, merge, convert, evaluate, ...) and their flags come from the stage
registry, stages/registry.py: each flag is a config override, so jobs and files see one config.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from core.errors import FramecastError
from jobs.submit import EXECUTORS, describe_pipeline
from stages import registry

# Videos in a Moving-MNIST test file, as in the standard mnist_test_seq.npy.
MNIST_TEST_VIDEOS = 10000


def _add_config_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("--config", required=required, help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def _parse_shard(text: str) -> tuple[int, int]:
    index, sep, count = text.partition("/")
    try:
        shard = (int(index), int(count))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n, e.g. 0/4") from None
    if not sep or not 0 <= shard[0] < shard[1]:
        raise argparse.ArgumentTypeError(f"--shard {text!r}: expected i/n with 0 <= i < n")
    return shard


class _Repeated(list):
    """The values of a flag declared ``repeat`` (registry.Arg), in the order given."""


class _AppendRepeated(argparse.Action):
    def __call__(self, parser, namespace, values, option_string=None):
        known = getattr(namespace, self.dest, None)
        setattr(namespace, self.dest, _Repeated([*(known or []), values]))


def _override_value(value) -> str:
    """A repeated flag's value as YAML that reads back as given (a JSON string, or list of them, so
    a glob's ``*`` or ``[`` is never YAML syntax): once, the value; more often, the list."""
    if isinstance(value, _Repeated):
        import json

        return json.dumps(value[0] if len(value) == 1 else list(value))
    return str(value)


def _flag_overrides(args: argparse.Namespace, mapping: dict[str, str]) -> list[str]:
    """Turn explicit command-line flags into config overrides, so jobs and files see one config."""
    return [f"{key}={_override_value(getattr(args, attr))}" for attr, key in mapping.items()
            if getattr(args, attr) is not None]


def _load(args: argparse.Namespace, flag_map: dict[str, str] | None = None):
    """Config from --config, or from the checkpoint's own saved config when only --checkpoint is given
    (several, or a glob: the first member's, training.inference.resolve_checkpoints)."""
    from core.config import load_config

    overrides = list(args.overrides) + _flag_overrides(args, flag_map or {})
    if getattr(args, "config", None) is None and getattr(args, "checkpoint", None):
        from core.checkpoint import config_from_checkpoint
        from training.inference import resolve_checkpoints

        return config_from_checkpoint(resolve_checkpoints(args.checkpoint)[0], overrides)
    return load_config(args.config, overrides)


def cmd_make_data(args: argparse.Namespace) -> None:
    counts = {"train": args.train, "val": args.val, "unlabeled": args.unlabeled, "hidden": args.hidden}
    common = dict(
        out=Path(args.out), counts=counts, frames=args.frames, hidden_frames=args.hidden_frames,
        seed=args.seed, overwrite=args.overwrite,
    )
    if args.png_level is not None:
        common["compress_level"] = args.png_level
    if args.from_video:
        from data.video import make_video_dataset

        given = {key: value for key, value in (("holdout", args.holdout), ("unlabeled_share", args.unlabeled_share),
                                               ("hidden_share", args.hidden_share), ("compress_level", args.png_level))
                 if value is not None}  # the rest keep data.video's defaults
        path = make_video_dataset(
            args.from_video, args.out, frames=args.frames, stride=args.stride, height=args.height, width=args.width,
            frame_step=args.frame_step, hidden_frames=args.hidden_frames, overwrite=args.overwrite, **given,
        )
    elif args.kind == "shapes":
        from data.synthetic import make_shapes_dataset

        path = make_shapes_dataset(height=args.height, width=args.width, **common)
    elif args.kind == "mnist-test":
        from data.moving_mnist import make_toronto_file

        if args.mnist is None or args.height != args.width:
            raise FramecastError("make-data --kind mnist-test needs --mnist FILE and square frames (--height = --width)")
        count = args.count if args.count is not None else MNIST_TEST_VIDEOS
        path = make_toronto_file(args.out, Path(args.mnist), count=count, size=args.height, frames=args.frames,
                                 seed=args.seed)
    else:
        from data.moving_mnist import make_moving_mnist_dataset

        if args.mnist is None:
            raise FramecastError("make-data --kind mnist needs --mnist FILE (an MNIST-format idx file)")
        size = args.height if args.height == args.width else None
        if size is None:
            raise FramecastError("Moving MNIST frames are square: give --height equal to --width")
        path = make_moving_mnist_dataset(mnist_path=Path(args.mnist), size=size, **common)
    print(f"wrote {path}")


def cmd_pack(args: argparse.Namespace) -> None:
    from data.pack import pack_dataset

    written = pack_dataset(
        Path(args.data), out_dir=Path(args.out) if args.out else None, splits=args.split or None,
        workers=args.workers, compression=args.compression, skip_bad=args.skip_bad,
        **({} if args.num_classes is None else {"num_classes": args.num_classes}),
    )
    for path in written:
        print(f"wrote {path}")


def cmd_stage(args: argparse.Namespace) -> None:
    """Any declared stage (stages/registry.py): its flags become config overrides, then its run(cfg)."""
    from core.threads import apply_threads

    stage = args.declared_stage
    cfg = _load(args, stage.flag_keys())
    apply_threads(cfg.run.threads)  # said by the run's own first line (a training's), not here
    result = registry.run_stage(stage, cfg, args.shard)
    if isinstance(result, Path):
        print(f"wrote {result}")


# ----------------------------------------------------------------------------- submitting jobs

def _job_help(stage: Stage) -> str:
    parts = [f"a job: {stage.help}"]
    if stage.job_help:
        parts.append(stage.job_help)
    if stage.shards:
        join = f" and a {stage.join} job" if stage.join else ""
        parts.append(f"an array of {stage.shards} jobs{join} when {stage.shards} > 1")
    return "; ".join(parts)


def add_submit_arguments(parser: argparse.ArgumentParser) -> None:
    """``submit {<stage>,pipeline} --config FILE [options] [key.sub=value ...]``, a stage per declaration.

    Each stage is a sub-command with the same options: that way the overrides can follow the
    options (argparse cannot join two positionals split by options).
    """
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--config", required=True, help="YAML config file (see configs/)")
    common.add_argument("--executor", choices=EXECUTORS, default=None,
                        help="slurm, local, or auto (slurm when sbatch is on PATH); default: slurm.executor")
    common.add_argument("--wait", action="store_true", help="wait for the jobs and report how each ended")
    common.add_argument("--timeout", type=float, default=None, metavar="SECONDS",
                        help="with --wait: stop waiting after this long (the jobs keep running)")
    common.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")
    commands = parser.add_subparsers(dest="stage", required=True, metavar="STAGE")
    helps = {stage.name: _job_help(stage) for stage in registry.stages()}
    helps["pipeline"] = f"the stages as chained jobs (afterok on Slurm): {describe_pipeline()}"
    for name, text in helps.items():
        commands.add_parser(name, parents=[common], help=text, description=text)
    text = ("train runs over a grid of settings and seeds as one job array (one after another on the local "
            "executor), then a compare job over them (jobs/sweep.py)")
    sweep = commands.add_parser("sweep", parents=[common], help=text, description=text)
    sweep.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2,...",
                       help="a data/model/train setting and its values (repeatable: the grid is every combination)")
    sweep.add_argument("--seeds", type=int, default=1, metavar="N",
                       help="runs per grid point, with train.seed = the config's train.seed + 0 .. N-1")


def cmd_submit(args: argparse.Namespace) -> int:
    """``main.py submit``: 0 when submitted (with --wait: when every job completed), else 1."""
    if args.stage == "sweep":
        return cmd_sweep(args)
    import submitit

    from core.config import load_config
    from jobs.submit import (describe_submission, job_count, pipeline_job_count, resolve_executor, snapshot_for,
                             submit_jobs, submit_pipeline)
    from jobs.wait import JobEnd, wait_jobs

    cfg = load_config(args.config, list(args.overrides))
    executor = resolve_executor(args.executor, cfg)
    code = snapshot_for(cfg)
    print(f"{code.describe()}, snapshot in {code.root}", flush=True)

    def show(job: submitit.Job) -> None:
        print(describe_submission(job), flush=True)

    if args.stage == "pipeline":
        jobs = submit_pipeline(cfg, executor, on_submit=show, timeout_s=args.timeout, code=code)
        expected = pipeline_job_count(cfg)
    else:
        jobs = submit_jobs(args.stage, cfg, executor, timeout_s=args.timeout, code=code, on_submit=show)
        expected = job_count(args.stage, cfg)
    # On the local executor submitting stops at the first stage that fails.
    complete = len(jobs) == expected
    if not args.wait:
        return 0 if complete else 1

    def report(end: JobEnd) -> None:
        print(end.describe(), flush=True)

    ends = wait_jobs(jobs, timeout_s=args.timeout, report=report, progress=lambda line: print(line, flush=True))
    ok = complete and all(end.ok for end in ends)
    print("all jobs completed" if ok else "some jobs did not complete", flush=True)
    if ok and args.stage == "pipeline":
        from core.paths import expand_config
        from jobs.summary import print_outputs

        print_outputs(expand_config(cfg))  # the paths as this machine sees them
    return 0 if ok else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    """``main.py submit sweep``: 0 when submitted (with --wait: when every job completed), else 1."""
    import submitit

    from jobs import submit
    from jobs.sweep import describe_sweep, plan_sweep, submit_sweep
    from jobs.wait import JobEnd, wait_jobs

    sweep = plan_sweep(args.config, list(args.overrides), list(args.grid), args.seeds)
    executor = submit.resolve_executor(args.executor, sweep.base)
    code = submit.snapshot_for(sweep.base)
    print(f"{code.describe()}, snapshot in {code.root}", flush=True)
    print(describe_sweep(sweep), flush=True)
    folders = iter(r.cfg.run_dir for r in sweep.runs)

    def show(job: submitit.Job) -> None:
        print(submit.describe_submission(job), flush=True)
        folder = next(folders, None)
        if folder is not None:
            print(f"  run: {folder}", flush=True)

    jobs, compare_job = submit_sweep(sweep, executor, code=code, on_submit=show, timeout_s=args.timeout)
    if not args.wait:
        return 0

    def report(end: JobEnd) -> None:
        print(end.describe(), flush=True)

    ends = wait_jobs([*jobs, compare_job], timeout_s=args.timeout, report=report,
                     progress=lambda line: print(line, flush=True))
    ok = all(end.ok for end in ends)
    if ends[-1].ok:
        print(f"comparison: {ends[-1].result}", flush=True)
    print("all jobs completed" if ok else "some jobs did not complete", flush=True)
    return 0 if ok else 1


def add_demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--executor", choices=EXECUTORS, default=None,
                        help="where the jobs run (default: slurm.executor of the config)")
    parser.add_argument("--config", default="configs/demo.yaml")
    parser.add_argument("--videos", type=int, default=256, help="videos in each of train/ and unlabeled/")
    parser.add_argument("--eval-videos", type=int, default=16, help="videos in each of val/ and hidden/")
    parser.add_argument("--height", type=int, default=48)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--timeout", type=float, default=3600, metavar="SECONDS",
                        help="stop waiting for the jobs after this long")
    parser.add_argument("overrides", nargs="*", metavar="key.sub=value", help="config overrides")


def cmd_demo(args: argparse.Namespace) -> int:
    from jobs.demo import run_demo

    return run_demo(args)


def cmd_runs(args: argparse.Namespace) -> None:
    from jobs.runs import run as report_runs

    print(report_runs(args.dir, as_json=args.json))


def cmd_inspect(args: argparse.Namespace) -> None:
    from models.loading import inspect_checkpoint

    print(inspect_checkpoint(args.checkpoint, args.device))


def cmd_config(args: argparse.Namespace) -> None:
    import dataclasses

    import yaml

    from core.config import config_to_dict
    from core.paths import expand_config

    cfg = _load(args)
    values = dataclasses.asdict(expand_config(cfg)) if args.expanded else config_to_dict(cfg)
    print(yaml.safe_dump(values, sort_keys=False), end="")


def _add_stage_command(commands: argparse._SubParsersAction, stage: registry.Stage) -> None:
    p = commands.add_parser(stage.name, help=stage.help)
    _add_config_arguments(p, required=stage.config_required)
    for arg in stage.args:
        p.add_argument(arg.flag, type=arg.type, help=f"{arg.help} [sets {arg.key}]",
                       **({"action": _AppendRepeated} if arg.repeat else {}))
    if stage.shards:
        p.add_argument("--shard", type=_parse_shard, default=registry.WHOLE, help="run only shard i of n (i/n)")
    p.set_defaults(func=cmd_stage, declared_stage=stage, shard=registry.WHOLE)


def build_parser(prog: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog or "main.py", description="framecast: video prediction on Slurm")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = commands.add_parser("make-data", help="generate a synthetic data set in the reference layout")
    p.add_argument("--kind", choices=["shapes", "mnist", "mnist-test"], default="shapes",
                   help="mnist-test: one fixed test file in the layout of the standard mnist_test_seq.npy "
                        "(--out FILE.npy; --frames, --count videos)")
    p.add_argument("--out", required=True, help="folder to create (train/ val/ unlabeled/ hidden/)")
    p.add_argument("--mnist", help="MNIST-format idx(.gz) images file (for --kind mnist and mnist-test)")
    p.add_argument("--count", type=int, default=None,
                   help="videos in the --kind mnist-test file (default 10000, as the standard file)")
    p.add_argument("--train", type=int, default=64, help="videos in train/")
    p.add_argument("--val", type=int, default=16, help="videos in val/")
    p.add_argument("--unlabeled", type=int, default=64, help="videos in unlabeled/")
    p.add_argument("--hidden", type=int, default=16, help="videos in hidden/")
    p.add_argument("--height", type=int, default=160)
    p.add_argument("--width", type=int, default=240)
    p.add_argument("--frames", type=int, default=22, help="frames per labeled/unlabeled video")
    p.add_argument("--hidden-frames", type=int, default=11, help="frames per hidden video")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--png-level", type=int, choices=range(10), metavar="0-9",
                   help="zlib level of the PNGs (default 1: fastest to write; 6, what most tools write, "
                        "gives smaller files that decode faster)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing data set in --out")
    v = p.add_argument_group("real videos (--from-video replaces --kind; --train/--val/... counts do not apply)")
    v.add_argument("--from-video", nargs="+", metavar="FILE_OR_GLOB",
                   help="cut these videos (.mp4, .avi, ...: whatever FFmpeg reads) into --frames-frame windows, "
                        "scaled and centre-cropped to --height x --width; each video's early part goes to "
                        "train/unlabeled, its late part to val/hidden (no shared frames); <out>/windows.json "
                        "records what was cut from where")
    v.add_argument("--stride", type=int, default=None,
                   help="frames between window starts (default --frames: windows do not overlap)")
    v.add_argument("--frame-step", type=int, default=1, help="keep every n-th frame of the video (default 1)")
    v.add_argument("--holdout", type=float, default=None,
                   help="share of each video's time, at its end, for val/hidden (default 0.25)")
    v.add_argument("--unlabeled-share", type=float, default=None,
                   help="share of the early windows written to unlabeled/ rather than train/ (default 0.5)")
    v.add_argument("--hidden-share", type=float, default=None,
                   help="share of the late windows written to hidden/ (--hidden-frames long) rather than val/ "
                        "(default 0.25)")
    p.set_defaults(func=cmd_make_data)

    p = commands.add_parser("pack", help="pack PNG split folders into one HDF5 file per split")
    p.add_argument("--data", required=True, help="data set root (holding train/ val/ ...)")
    p.add_argument("--out", help="folder for <split>.h5 (default: DATA/packed)")
    p.add_argument("--split", action="append", help="pack only this split (repeatable)")
    p.add_argument("--workers", type=int, default=None, help="decoding processes (default: all cores)")
    p.add_argument("--compression", choices=["none", "gzip", "lzf"], default="none")
    p.add_argument("--skip-bad", action="store_true", help="skip and record bad videos instead of stopping")
    p.add_argument("--num-classes", type=int, default=None,
                   help="mask.npy class ids must be below this (default: data.num_classes' default)")
    p.set_defaults(func=cmd_pack)

    for stage in registry.stages():
        _add_stage_command(commands, stage)

    p = commands.add_parser("submit", help="submit stages as Slurm (or local) jobs through submitit")
    add_submit_arguments(p)
    p.set_defaults(func=cmd_submit)

    p = commands.add_parser("demo", help="make a small data set and run the whole pipeline as jobs")
    add_demo_arguments(p)
    p.set_defaults(func=cmd_demo)

    p = commands.add_parser("runs", help="one line per run folder: family, state, epochs, best val loss, size")
    p.add_argument("dir", nargs="?", default="runs", help="folder of run folders, or one run folder (default: runs)")
    p.add_argument("--json", action="store_true", help="print JSON, one object per run")
    p.set_defaults(func=cmd_runs)

    p = commands.add_parser("inspect", help="load a checkpoint and print what it holds: family, size, epoch, "
                                            "losses (as load_model.py)")
    p.add_argument("checkpoint", help="a checkpoint file, e.g. runs/<name>/best.pt")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:<n> or auto (default cpu)")
    p.set_defaults(func=cmd_inspect)

    p = commands.add_parser("config", help="print the resolved config (file + overrides) as YAML")
    _add_config_arguments(p, required=False)
    p.add_argument("--checkpoint", help="the config saved in this checkpoint instead of --config")
    p.add_argument("--expanded", action="store_true",
                   help="with ${VAR} in path settings expanded from this shell's environment")
    p.set_defaults(func=cmd_config)
    return parser


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
    args = build_parser(prog).parse_args(argv)
    if hasattr(sys.stdout, "reconfigure"):
        # A path whose bytes are not in the locale's encoding (os.fsdecode keeps them as surrogates)
        # prints as those same bytes, as ls shows it, instead of raising UnicodeEncodeError.
        sys.stdout.reconfigure(errors="surrogateescape")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:
        code = args.func(args)
    except FramecastError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return getattr(exc, "exit_status", 2)  # a stop by signal: 128 + its number, as the shell's
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


