"""The train stage: ``run(cfg)`` trains the configured model and keeps ``last.pt`` / ``best.pt``.

It works the same in a terminal, under torchrun, in a submitit job and from an SBATCH file:
- the process layout comes from the environment (``core.distributed``); only rank 0 writes files,
  and only one training at a time writes a run folder (``core.runlock``);
- it resumes by itself from ``<run_dir>/last.pt`` (from ``best.pt`` when only that is left) and
  continues exactly as an uninterrupted run would (the learning rate and the sampling
  probabilities are functions of the step, each epoch's data order a function of ``(seed, epoch)``,
  and everything else that changes is in the checkpoint);
- a stop signal (a Slurm time limit or preemption) saves ``last.pt`` at the next step boundary
  (multi-process: the next log interval, where the processes agree) before the job stops or, under
  submitit, is requeued;
- it refuses to resume a checkpoint of a different model, and stops with a clear message on a
  non-finite loss without ever saving a non-finite model.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
import threading
import time
from typing import Any, Callable

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from core.checkpoint import BEST_NAME, FRAME_SIZE_KEY, LAST_NAME, check_same_model, load_checkpoint, save_checkpoint
from core.config import CONFIG_NAME, Config, config_from_dict, config_to_dict, save_config
from core.distributed import DistContext, all_reduce_sum, barrier, cleanup_distributed, init_distributed
from core.errors import FramecastError
from core.precision import Precision, compile_cache_dir, use_compile_cache
from core.runlock import RunLock
from core.seeding import capture_rng_state, restore_rng_state, seed_everything
from core.outputs import joint_start_path, segmenter_path
from core.threads import describe_threads
from data.datasets import (build_datasets, build_mask_map_datasets, build_segment_datasets, build_split_dataset,
                           check_channels, make_loader)
from models import TrainingForward, count_parameters
from models.loading import load_segmenter
from models.registry import build_forecaster, task_model_config
from models.segmenter import build_segmenter
from training.metrics import SAMPLES_TAG, MetricsLog, lead_time_record, scored_validation
from training.progress import Progress, epoch_number
from training.sampler import EpochSampler
from training.schedule import LRSchedule
from training.segmentation import segment_train_step, segment_validation
from training.step import FrameLoss, build_grad_scaler, build_optimizer, train_step, validation_sums

log = logging.getLogger(__name__)

# What the validation line adds when the run ends there (progress.stopped), keyed by why.
STOP_NOTES = {"early_stop": "; no improvement for {bad} validations, stopping early",
              "time_budget": "; train.max_minutes reached, stopping"}
# Signals that ask for a checkpoint and a clean stop.
STOP_SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGUSR2", None)) if s)

CheckpointHook = Callable[[dict[str, Any]], None]


class NonFiniteLossError(FramecastError):
    """The loss became NaN or infinite; nothing was saved after the last good checkpoint."""


class TrainingInterrupted(FramecastError):
    """A stop signal arrived; progress was saved and the same command resumes it."""


def run(cfg: Config, *, on_checkpoint: CheckpointHook | None = None) -> dict[str, Any]:
    """Train ``cfg``'s model, resuming from ``<run_dir>/last.pt`` when it exists.

    ``on_checkpoint(info)`` is called on every process after each ``last.pt`` save with the epoch,
    step, batches done in the epoch, validation loss and the (unwrapped) model; tests use it to
    stop a run at a chosen point, as a kill would.
    Returns a summary of plain types (the same on every process).
    """
    ctx = init_distributed(cfg.run.device)
    try:
        with _run_folder_lock(cfg, ctx):
            trainer = Trainer(cfg, ctx, on_checkpoint)
            first_step = trainer.step
            try:
                with trainer.stop_signals(), trainer.metrics:  # leaving closes the TensorBoard events
                    summary = trainer.fit()
            finally:
                # The loaders' workers end now, not at garbage collection: a caller that goes on
                # (bench_quality's evaluate, a local sweep) keeps no idle workers.
                trainer.train_loader.end_workers()
                trainer.val_loader.end_workers()
                # Also on a stop, a requeue (SystemExit) or an error: what this process computed,
                # so the work redone after a restart can be counted from the job logs.
                log.info("steps run in this process: %d (step %d to %d)", trainer.step - first_step,
                         first_step, trainer.step)
            barrier(ctx)  # leave together: rank 0 may still be saving when the others finish
        return summary
    finally:
        cleanup_distributed(ctx)


@contextlib.contextmanager
def _run_folder_lock(cfg: Config, ctx: DistContext):
    """Rank 0 holds the run folder's lock; every rank learns whether it got it, so all stop together."""
    lock = RunLock(cfg.run_dir, cfg.run.lock_stale_s) if ctx.is_main else None
    refusal = None
    if lock is not None:
        try:
            lock.acquire()
        except FramecastError as exc:
            refusal = exc
    if ctx.distributed:
        flag = torch.tensor([1.0 if refusal else 0.0], device=ctx.device)
        if all_reduce_sum(flag, ctx).item() and refusal is None:
            refusal = FramecastError(f"{cfg.run_dir}: another training is writing this run folder (see rank 0)")
    if refusal is not None:
        raise refusal
    try:
        yield
    finally:
        if lock is not None:
            lock.release()


class Trainer:
    def __init__(self, cfg: Config, ctx: DistContext, on_checkpoint: CheckpointHook | None = None):
        self.cfg, self.ctx, self.on_checkpoint = cfg, ctx, on_checkpoint
        tc = cfg.train
        self.tc = tc
        self.loss = FrameLoss.from_config(tc)  # train.loss and its structure terms
        self.device = ctx.device
        self.run_dir = cfg.run_dir
        self.last_path = self.run_dir / LAST_NAME
        self.best_path = self.run_dir / BEST_NAME
        self.t_in, self.t_out = cfg.data.t_in, cfg.data.t_out
        self.precision = Precision.for_run(tc, self.device)
        # train.task=segment: the segmenter (frame -> class logits, cross-entropy, best by val Jaccard)
        # goes through the same loop, checkpoints, resume, signals and lock as a forecaster; masks: a
        # forecaster of one-hot class maps (data.num_classes channels); joint: a forecaster whose loss
        # adds the frozen segmenter's cross-entropy on its predicted frames.
        self.segmenting = tc.task == "segment"
        self.in_channels = task_model_config(cfg).in_channels
        self.frames_out = tc.task in ("forecast", "joint")  # the model's outputs are frames (sample strips)

        resume_path, resume = self._read_resume_checkpoint()

        # ---- data: each rank's share, in an order fixed by (seed, epoch)
        if tc.task == "segment":
            train_set, val_set = build_segment_datasets(cfg)
        elif tc.task == "masks":
            train_set, val_set = build_mask_map_datasets(cfg)
        elif tc.task == "joint":  # frames and masks to train on; frames to validate on, as a forecaster
            train_set, val_set = build_segment_datasets(cfg)[0], build_split_dataset(cfg.data, cfg.data.val_split)
        else:
            train_set, val_set = build_datasets(cfg)
        if tc.task != "masks":
            check_channels(train_set, self.in_channels)
        self.frame_size = list(train_set.frame_shape[:2])  # (H, W) the model was trained on
        self.train_videos, self.val_videos = len(train_set), len(val_set)
        if self.val_videos == 0:
            raise FramecastError(f"{cfg.data.root}: validation split {cfg.data.val_split!r} holds no videos")
        self.train_sampler = EpochSampler(
            len(train_set), rank=ctx.rank, world_size=ctx.world_size, shuffle=True, seed=tc.seed, pad=True
        )
        steps_per_epoch = self.train_sampler.per_rank // tc.batch_size
        if tc.max_steps_per_epoch > 0:
            steps_per_epoch = min(steps_per_epoch, tc.max_steps_per_epoch)
        if steps_per_epoch == 0:
            raise FramecastError(
                f"{cfg.data.root}: the training splits {cfg.data.train_splits} hold {len(train_set)} "
                f"windows, fewer than train.batch_size={tc.batch_size} for each of {ctx.world_size} process(es)"
            )
        self.train_sampler.limit = steps_per_epoch * tc.batch_size  # whole batches only
        val_sampler = EpochSampler(
            len(val_set), rank=ctx.rank, world_size=ctx.world_size, shuffle=False, pad=False
        )
        loader_args = dict(
            num_workers=cfg.data.num_workers,
            prefetch_factor=cfg.data.prefetch_factor,
            pin_memory=cfg.data.pin_memory and self.device.type == "cuda",
            drop_last=False,  # the samplers already hand out whole batches
            seed=tc.seed,
        )
        self.train_loader = make_loader(
            train_set, tc.batch_size, shuffle=False, sampler=self.train_sampler, **loader_args
        )
        self.val_loader = make_loader(val_set, tc.batch_size, shuffle=False, sampler=val_sampler, **loader_args)
        # run.tensorboard / run.wandb: the validation videos of its sample strip (this process's first ones).
        self._scored = bool(cfg.run.tensorboard or cfg.run.wandb) and self.frames_out
        self._sample_names = ([val_set.video_name(i) for i in list(val_sampler)[:cfg.evaluate.samples]]
                              if self._scored else [])

        # ---- model, optimizer, schedule (seeded: every run of this config starts from the same weights)
        seed_everything(tc.seed)
        if self.segmenting:
            self.model = build_segmenter(cfg.segment, self.in_channels, cfg.data.num_classes).to(self.device)
        else:
            self.model = build_forecaster(cfg).to(self.device)
        self.segmenter = None
        self.mask_weight = cfg.segment.joint_weight
        if tc.task == "joint":
            self.segmenter = self._frozen_segmenter()
            if resume is None:
                self._start_from_forecaster()
        self.model.set_activation_checkpointing(tc.activation_checkpointing)
        if not self.segmenting:  # the segmenter predicts no frames to supervise
            self.model.set_input_supervision(tc.supervise_inputs)  # FramecastError where the family has none
        if self.precision.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.num_parameters = count_parameters(self.model)
        self.optimizer = build_optimizer(self.model, tc, self.device)
        self.scaler = build_grad_scaler(self.precision)
        self.schedule = LRSchedule(tc, tc.epochs * steps_per_epoch)

        self.progress = Progress(steps_per_epoch=steps_per_epoch, total_steps=tc.epochs * steps_per_epoch,
                                 world_size=ctx.world_size)
        self.start_epoch = 0  # index of the first epoch this process runs
        self.skip_batches = 0  # batches of that epoch already consumed before a resume
        self.resumed_from: dict[str, Any] | None = None
        if resume is not None:
            self._restore(resume_path, resume)

        # ---- execution wrappers (the checkpoint always holds the plain module's weights)
        training_pass = self.model if self.segmenting else TrainingForward(self.model)
        self.forward_model = self.model
        if tc.compile:
            use_compile_cache(compile_cache_dir(cfg))
            self.forward_model, training_pass = torch.compile(self.model), torch.compile(training_pass)
        if ctx.distributed:
            self.train_model = DistributedDataParallel(
                training_pass,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
        else:
            self.train_model = training_pass
        self.metrics = MetricsLog(self.run_dir, enabled=ctx.is_main, tensorboard=cfg.run.tensorboard,
                                  wandb=cfg.run.wandb, config=config_to_dict(cfg), hparams=cfg.run.hparams,
                                  wandb_project=cfg.run.wandb_project)
        self._stop_signal = ""  # set by the signal handler in this process
        self._stop_signal_anywhere = False  # any process got one (agreed at each log interval)
        self._chained_handlers: dict[int, Callable] = {}  # submitit's own handlers, run after saving
        self._saved_step = -1
        self._last_train = (math.nan, math.nan)  # (loss, videos/s) of the latest log interval

    @property
    def step(self) -> int:
        return self.progress.step

    # ------------------------------------------------------------------ joint fine-tuning

    def _frozen_segmenter(self) -> torch.nn.Module:
        path = segmenter_path(self.cfg)
        if not path.is_file():
            raise FramecastError(f"{path}: segmenter checkpoint not found; train.task=joint needs a trained "
                                 "segmenter (train it with train.task=segment, or set segment.checkpoint)")
        segmenter, saved, _ = load_segmenter(path, self.device)
        if saved.data.num_classes != self.cfg.data.num_classes:
            raise FramecastError(f"{path}: a segmenter of {saved.data.num_classes} classes, but data.num_classes "
                                 f"is {self.cfg.data.num_classes}")
        return segmenter.requires_grad_(False)

    def _start_from_forecaster(self) -> None:
        """A joint run starts from a trained forecaster's weights (segment.joint_from): fine-tuning."""
        path = joint_start_path(self.cfg)
        if not path.is_file():
            raise FramecastError(f"{path}: forecaster checkpoint not found; train.task=joint fine-tunes a trained "
                                 "forecaster (train one first, or set segment.joint_from)")
        state = load_checkpoint(path)
        check_same_model(path, config_to_dict(config_from_dict(state["config"])), config_to_dict(self.cfg),
                         "train.task=joint fine-tunes the model the config describes")
        self.model.load_state_dict(state["model"])
        log.info("joint fine-tuning starts from %s (epoch %s)", path, state.get("progress", {}).get("epoch"))

    # ------------------------------------------------------------------ resume

    def _read_resume_checkpoint(self) -> tuple[Any, dict[str, Any] | None]:
        """``last.pt`` when present, else ``best.pt`` (never thrown away), checked to be this model.

        A corrupt file is an error, never ignored.
        """
        path = self.last_path if self.last_path.exists() else self.best_path
        if not path.exists():
            return path, None
        state = load_checkpoint(path)  # FramecastError naming the file when unreadable
        try:
            saved = config_to_dict(config_from_dict(state["config"]))
        except FramecastError as exc:
            raise FramecastError(f"{path}: its saved config does not fit this framecast ({exc})") from None
        check_same_model(path, saved, config_to_dict(self.cfg),
                         f"choose another run.name or remove {self.run_dir} to start over")
        if path == self.best_path:
            log.warning("%s is missing: resuming from %s (the training after its epoch is redone; "
                        "best.pt is kept)", self.last_path, self.best_path)
        return path, state

    def _restore(self, path, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])  # strict: every tensor must match
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            # The kernel choice is this machine's (fused on CUDA, foreach on CPU), not the saver's.
            for key in ("fused", "foreach"):
                if key in self.optimizer.defaults:
                    group[key] = self.optimizer.defaults[key]
        self.schedule.load_state_dict(state["scheduler"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        saved = Progress.from_dict(state["progress"])
        now = self.progress
        if (saved.steps_per_epoch, saved.total_steps) != (now.steps_per_epoch, now.total_steps):
            log.warning(
                "%s: saved with %s steps per epoch (%s in all), this run has %d (%d): the data, "
                "train.batch_size, train.epochs or the number of processes changed, so the run will "
                "not match an uninterrupted one",
                path, saved.steps_per_epoch, saved.total_steps, now.steps_per_epoch, now.total_steps,
            )
        if saved.epoch_complete:
            self.start_epoch, self.skip_batches = saved.epoch, 0
        else:
            self.start_epoch, self.skip_batches = saved.epoch - 1, min(saved.batches_done, now.steps_per_epoch)
        saved.steps_per_epoch, saved.total_steps, saved.world_size = now.steps_per_epoch, now.total_steps, now.world_size
        self.progress = saved
        self.resumed_from = {"epoch": saved.epoch, "step": saved.step, "batches_done": saved.batches_done,
                             "checkpoint": str(path)}

    # ------------------------------------------------------------------ signals

    @contextlib.contextmanager
    def stop_signals(self):
        """Turn SIGTERM/SIGUSR2 into "save last.pt at the next step boundary, then stop".

        Under submitit its handler (which requeues the job and exits) is chained: it runs after the
        save instead of at once, so a requeued job loses no steps. A handler set by any other caller
        is left alone.
        """
        installed: dict[int, Any] = {}
        if threading.current_thread() is threading.main_thread():
            under_submitit = bool(os.environ.get("SUBMITIT_EXECUTOR"))
            for sig in STOP_SIGNALS:
                previous = signal.getsignal(sig)
                if previous is signal.SIG_DFL:
                    installed[sig] = signal.signal(sig, self._on_signal)
                elif under_submitit and callable(previous) and sig == signal.SIGUSR2:
                    self._chained_handlers[sig] = previous
                    installed[sig] = signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, previous in installed.items():
                signal.signal(sig, previous)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stop_signal = signal.Signals(signum).name
        self._stop_signum = signum

    def _stop_requested(self) -> bool:
        """One process: a signal seen now. Several: one any process saw by the last log interval."""
        return self._stop_signal_anywhere or (not self.ctx.distributed and bool(self._stop_signal))

    def _stop_now(self, epoch: int) -> None:
        """Save (if not just saved), then hand over to submitit's requeue or stop with a message."""
        if self._saved_step != self.step:
            self._checkpoint(epoch, False)
        chained = self._chained_handlers.get(getattr(self, "_stop_signum", -1))
        if chained is not None:
            log.info("stop signal %s: last.pt saved at step %d; handing over to submitit to requeue",
                     self._stop_signal, self.step)
            chained(self._stop_signum, None)  # requeues and exits (rank 0); returns on other ranks
        if self.ctx.distributed and not self.ctx.is_main and os.environ.get("SUBMITIT_EXECUTOR"):
            # Under submitit only its requeue signal stops training, and rank 0 requeues the whole job
            # (or fails it, saying why). An exception here would make submitit write "Submitted job
            # triggered an exception" into this rank's log, for a job that then completes.
            log.info("rank %d: stopped at step %d; rank 0 hands the job to submitit's requeue",
                     self.ctx.rank, self.step)
            raise SystemExit(0)
        raise TrainingInterrupted(
            f"training stopped by {self._stop_signal or 'a signal to another process'} at epoch "
            f"{epoch_number(epoch)}, step {self.step}; progress saved to {self.last_path}; "
            "run the same command again to resume"
        )

    # ------------------------------------------------------------------ the loop

    def _out_of_time(self) -> bool:
        minutes = self.tc.max_minutes
        return minutes > 0 and time.perf_counter() - self._started > 60 * minutes

    def fit(self) -> dict[str, Any]:
        started = self._started = time.perf_counter()
        tc = self.tc
        if self.progress.stopped or self.start_epoch >= tc.epochs:
            log.info("%s: already finished (epoch %d, %s); nothing to train", self.last_path,
                     self.start_epoch, self.progress.stopped or "all epochs done")
            return self._summary(started)
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / CONFIG_NAME)
            self.metrics.start(self.step if self.resumed_from else None)
        if self.resumed_from:
            log.info("resuming %s from epoch %d, step %d", self.resumed_from["checkpoint"],
                     self.resumed_from["epoch"], self.step)
        log.info(
            "training %s: %s, %s parameters, %d train / %d val videos, %d steps per epoch, "
            "%d process(es) on %s, %s, %s",
            self.run_dir, self.model.title, f"{self.num_parameters:,}", self.train_videos, self.val_videos,
            self.progress.steps_per_epoch, self.ctx.world_size, self.device, self.precision.describe(),
            describe_threads(),
        )
        self.train_model.train()
        for epoch in range(self.start_epoch, tc.epochs):
            skip, self.skip_batches = self.skip_batches, 0
            self._train_epoch(epoch, skip)
            if self.progress.stopped:
                break
        return self._summary(started)

    def _train_epoch(self, epoch: int, skip: int) -> None:
        tc, progress = self.tc, self.progress
        self.train_sampler.set_epoch(epoch, skip * tc.batch_size)
        # Summed on the device (no sync per step); a resumed run continues the saved log interval.
        self._loss_sum = torch.tensor(progress.interval_loss, dtype=torch.float32, device=self.device)
        self._loss_steps = progress.interval_steps
        progress.interval_loss, progress.interval_steps = [0.0, 0.0], 0
        self._mark = time.perf_counter()
        progress.batches_done = skip
        progress.epoch = epoch_number(epoch)
        bar = tqdm(
            total=progress.steps_per_epoch, initial=skip, desc=f"epoch {progress.epoch}/{tc.epochs}",
            unit="step", disable=None if self.ctx.is_main else True, dynamic_ncols=True, leave=False,
        )
        with bar:
            for batch in self.train_loader:  # uint8 (B, T, H, W, C)
                lr = self.schedule.apply(self.optimizer, self.step)
                if self.segmenting:
                    losses = segment_train_step(
                        self.train_model, self.optimizer, batch, step=self.step,
                        frames_per_video=self.cfg.segment.frames_per_video, in_channels=self.in_channels,
                        precision=self.precision, grad_clip=tc.grad_clip, scaler=self.scaler,
                    )
                else:
                    losses = train_step(
                        self.train_model, self.optimizer, batch, step=self.step, t_in=self.t_in,
                        in_channels=self.in_channels, precision=self.precision, loss=self.loss,
                        grad_clip=tc.grad_clip, scaler=self.scaler, segmenter=self.segmenter,
                        mask_weight=self.mask_weight,
                    )
                self._loss_sum += losses
                self._loss_steps += 1
                progress.step += 1
                progress.batches_done += 1
                bar.update()
                validate_now = tc.val_every_steps > 0 and self.step % tc.val_every_steps == 0
                if (self.step % tc.log_every_steps == 0 or validate_now
                        or progress.batches_done == progress.steps_per_epoch):
                    self._log_train(epoch, lr, bar)
                if validate_now:
                    improved = self._validate(epoch)
                    self._checkpoint(epoch, improved)
                    if progress.stopped:
                        return
                if self._out_of_time_agreed():
                    progress.stopped = "time_budget"
                    improved = False if validate_now else self._validate(epoch)
                    self._checkpoint(epoch, improved)
                    return
                # At an epoch's last step its validation comes first: the next epoch's first step stops.
                if self._stop_requested() and progress.batches_done < progress.steps_per_epoch:
                    self._stop_now(epoch)
        if tc.val_every_steps == 0:
            improved = self._validate(epoch)
            self._checkpoint(epoch, improved)
        elif self._saved_step != self.step:
            self._checkpoint(epoch, False)
        # A stop seen at the epoch's last step: the epoch is validated and saved, so stop here (with one
        # step per epoch there is no next step before the end of an epoch to stop at).
        if self._stop_requested():
            self._stop_now(epoch)

    def _out_of_time_agreed(self) -> bool:
        """``train.max_minutes`` passed, looked at on log intervals so every process agrees."""
        if self.tc.max_minutes <= 0 or self.step % self.tc.log_every_steps:
            return False
        over = torch.tensor([1.0 if self._out_of_time() else 0.0], device=self.device)
        return bool(all_reduce_sum(over, self.ctx).item())

    def _log_train(self, epoch: int, lr: float, bar: tqdm) -> None:
        """Read the accumulated loss (the only host-device sync of the step loop) and log it.

        The sums of every process are added up, so all processes see the same mean loss and the same
        stop request, and take the same decisions.
        """
        if self._loss_steps == 0:
            return
        flag = 1.0 if self._stop_signal else 0.0
        extra = torch.tensor([self._loss_steps, flag], dtype=torch.float64).to(self.device, non_blocking=True)
        packed = torch.cat([self._loss_sum.double(), extra])  # (4,): frame loss, extra loss, steps, signals
        loss_sum, extra_sum, steps, flags = all_reduce_sum(packed, self.ctx).tolist()
        now = time.perf_counter()
        train_loss = loss_sum / steps
        extra_loss = extra_sum / steps
        if not (math.isfinite(train_loss) and math.isfinite(extra_loss)):
            raise NonFiniteLossError(
                f"non-finite loss ({train_loss}, extra terms {extra_loss}) at epoch {epoch_number(epoch)} "
                f"step {self.step} (within the last {self._loss_steps} steps); last good checkpoint kept "
                f"at {self._kept()}"
            )
        videos_per_s = self._loss_steps * self.tc.batch_size * self.ctx.world_size / max(now - self._mark, 1e-9)
        record = {"kind": "train", "epoch": epoch_number(epoch), "step": self.step, "train_loss": train_loss,
                  "lr": lr, "videos_per_s": videos_per_s, "time": time.time()}
        if extra_sum:
            record["train_extra_loss"] = extra_loss
        self.metrics.append(record)
        bar.set_postfix(loss=f"{train_loss:.4g}", videos_s=f"{videos_per_s:.1f}", refresh=False)
        self._last_train = (train_loss, videos_per_s)
        self._loss_sum.zero_()
        self._loss_steps = 0
        self._stop_signal_anywhere = flags > 0
        self._mark = now

    def _kept(self) -> str:
        return str(self.last_path) if self.last_path.exists() else "none (no checkpoint written yet)"

    def _validate(self, epoch: int) -> bool:
        """Mean per-video loss over the whole validation split (all processes together); for the
        segmenter 1 - Jaccard of its masks, so lower is better for both."""
        progress = self.progress
        self.forward_model.eval()
        scored = self._scored
        extra: dict[str, Any] = {}
        if self.segmenting:  # every process computes the same pooled Jaccard (torchmetrics syncs it)
            score = segment_validation(self.forward_model, self.val_loader, num_classes=self.cfg.data.num_classes,
                                       in_channels=self.in_channels, precision=self.precision,
                                       max_batches=self.tc.max_val_batches)
            extra = {"val_jaccard": score["jaccard"]}
            sums = torch.tensor([1.0 - score["jaccard"], 1.0], dtype=torch.float64, device=self.device)
        elif scored:  # the same loss, plus per-lead-time scores and sample videos from the same pass
            sums, scores, shown = scored_validation(
                self.forward_model, self.val_loader, t_in=self.t_in, t_out=self.t_out,
                in_channels=self.in_channels, precision=self.precision, loss=self.loss,
                max_batches=self.tc.max_val_batches, samples=len(self._sample_names), ssim=self.cfg.evaluate.ssim,
            )
        else:
            sums = validation_sums(
                self.forward_model, self.val_loader, t_in=self.t_in, in_channels=self.in_channels,
                precision=self.precision, loss=self.loss, max_batches=self.tc.max_val_batches,
            )
        total, count = all_reduce_sum(sums, self.ctx).tolist()
        self.train_model.train()
        val_loss = total / count
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(
                f"non-finite validation loss ({val_loss}) at epoch {epoch_number(epoch)} step {self.step}; "
                f"last good checkpoint kept at {self._kept()}"
            )
        progress.val_loss = val_loss
        improved = val_loss < progress.best_val_loss
        if improved:
            progress.best_val_loss, progress.best_epoch, progress.best_step = val_loss, epoch_number(epoch), self.step
            progress.bad_validations = 0
        else:
            progress.bad_validations += 1
        self.schedule.observe(val_loss)
        patience = self.tc.early_stop_patience
        if patience > 0 and progress.bad_validations >= patience:
            progress.stopped = "early_stop"
        lr = self.schedule.lr(self.step)
        self.metrics.append({
            "kind": "val", "epoch": epoch_number(epoch), "step": self.step, "val_loss": val_loss,
            "best_val_loss": progress.best_val_loss, "lr": lr, "time": time.time(), **extra,
            **(lead_time_record(scores, self.ctx) if scored else {}),
        })
        if scored and shown and self.ctx.is_main:
            self.metrics.image(SAMPLES_TAG, self.step, self._sample_strip(*shown))
        self.metrics.plot()
        log.info(
            "epoch %d/%d step %d: train loss %.5g, val loss %.5g (best %.5g at epoch %d), %.1f videos/s, "
            "lr %.3g%s", epoch_number(epoch), self.tc.epochs, self.step, self._last_train[0], val_loss,
            progress.best_val_loss, progress.best_epoch, self._last_train[1], lr,
            STOP_NOTES.get(progress.stopped, "").format(bad=progress.bad_validations),
        )
        if extra:
            log.info("val Jaccard %.4f (val loss = 1 - Jaccard)", extra["val_jaccard"])
        self._mark = time.perf_counter()
        return improved

    def _sample_strip(self, inputs: torch.Tensor, truth: torch.Tensor, prediction: torch.Tensor) -> Any:
        """The evaluate stage's sample strip (rows input / truth / prediction) as a uint8 (H, W, 3) array."""
        import numpy as np

        from training.figures import sample_strip
        from training.inference import to_uint8_frames

        frames = [to_uint8_frames(t).numpy() for t in (inputs, truth, prediction)]  # (S, T, H, W, 3) each
        names = self._sample_names[:len(frames[0])]
        return np.asarray(sample_strip(*frames, names, self.t_in).image)

    def _checkpoint(self, epoch: int, improved: bool) -> None:
        """Write ``best.pt`` (when improved) then ``last.pt``, each atomically, from rank 0.

        best before last: a kill between the two leaves an older ``last.pt`` that redoes the
        improvement and rewrites ``best.pt``, never a ``last.pt`` that believes a newer best exists.
        """
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        if not bool(finite):
            raise NonFiniteLossError(
                f"non-finite weights at epoch {epoch_number(epoch)} step {self.step}; not saved; last good "
                f"checkpoint kept at {self._kept()}"
            )
        if self.ctx.is_main:
            state = self._state()
            if improved:
                save_checkpoint(state, self.best_path)
            save_checkpoint(state, self.last_path)
        self._saved_step = self.step
        self._mark = time.perf_counter()
        if self.on_checkpoint is not None:
            self.on_checkpoint({
                "epoch": self.progress.epoch, "step": self.step, "batches_done": self.progress.batches_done,
                "val_loss": self.progress.val_loss, "model": self.model, "rank": self.ctx.rank,
            })

    def _state(self) -> dict[str, Any]:
        self.progress.interval_loss = self._loss_sum.tolist()
        self.progress.interval_steps = self._loss_steps
        return {
            "model": self.model.state_dict(),
            "config": config_to_dict(self.cfg),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "progress": self.progress.to_dict(),
            "parameters": self.num_parameters,
            FRAME_SIZE_KEY: self.frame_size,
            "rng": capture_rng_state(),
        }

    def _summary(self, started: float) -> dict[str, Any]:
        progress = self.progress
        validated = progress.best_epoch > 0
        summary = {
            "run_dir": str(self.run_dir),
            "last_checkpoint": str(self.last_path),
            "best_checkpoint": str(self.best_path) if validated else None,
            "family": "segmenter" if self.segmenting else self.cfg.model.family,
            "task": self.tc.task,
            "parameters": self.num_parameters,
            "epochs_run": progress.epoch,
            "steps": progress.step,
            "val_loss": progress.val_loss,
            "best_val_loss": progress.best_val_loss if validated else None,
            "best_epoch": progress.best_epoch,
            "stopped": progress.stopped or "completed",
            "resumed_from": self.resumed_from,
            "world_size": self.ctx.world_size,
            "device": str(self.device),
            "seconds": round(time.perf_counter() - started, 3),
        }
        log.info(
            "train done: %s, %s, %d epochs, %d steps, best val loss %s at epoch %d (%s), %.1f s",
            self.run_dir, self.model.title, summary["epochs_run"], progress.step,
            f"{progress.best_val_loss:.5g}" if validated else "n/a", progress.best_epoch, summary["stopped"],
            summary["seconds"],
        )
        return summary
