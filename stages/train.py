"""The train stage: ``run(cfg)`` trains the configured model and keeps ``last.pt`` / ``best.pt``.

It works the same in a terminal, under torchrun, in a submitit job and from an SBATCH file:
- the process layout comes from the environment (``core.distributed``); only rank 0 writes files;
- it resumes by itself from ``<run_dir>/last.pt`` and continues exactly as an uninterrupted run
  would (the learning rate is a function of the step, each epoch's data order a function of
  ``(seed, epoch)``, and everything else that changes is in the checkpoint);
- it refuses to resume a checkpoint of a different model, and stops with a clear message on a
  non-finite loss without ever saving a non-finite model.
"""
from __future__ import annotations

import contextlib
import dataclasses
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

from core.checkpoint import BEST_NAME, LAST_NAME, load_checkpoint, save_checkpoint
from core.config import Config, config_to_dict, save_config
from core.distributed import DistContext, all_reduce_sum, barrier, cleanup_distributed, init_distributed
from core.errors import FramecastError
from core.seeding import capture_rng_state, restore_rng_state, seed_everything
from data.datasets import build_datasets, make_loader
from models import build_model, count_parameters
from training.metrics import MetricsLog
from training.sampler import EpochSampler
from training.schedule import LRSchedule
from training.step import (
    autocast_dtype,
    build_optimizer,
    train_step,
    use_channels_last,
    use_cudnn_autotune,
    validation_sums,
)

log = logging.getLogger(__name__)

CONFIG_NAME = "config.yaml"
# Signals that ask for a checkpoint and a clean stop, when nobody else (submitit) handles them.
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
        trainer = Trainer(cfg, ctx, on_checkpoint)
        with trainer.stop_signals():
            summary = trainer.fit()
        barrier(ctx)  # leave together: rank 0 may still be saving when the others finish
        return summary
    finally:
        cleanup_distributed(ctx)


class Trainer:
    def __init__(self, cfg: Config, ctx: DistContext, on_checkpoint: CheckpointHook | None = None):
        self.cfg, self.ctx, self.on_checkpoint = cfg, ctx, on_checkpoint
        tc = cfg.train
        self.tc = tc
        self.device = ctx.device
        self.run_dir = cfg.run_dir
        self.last_path = self.run_dir / LAST_NAME
        self.best_path = self.run_dir / BEST_NAME
        self.t_in, self.t_out = cfg.data.t_in, cfg.data.t_out
        if tc.epochs < 1 or tc.log_every_steps < 1:
            raise FramecastError(
                f"train.epochs ({tc.epochs}) and train.log_every_steps ({tc.log_every_steps}) must be >= 1"
            )
        use_cudnn_autotune(self.device)
        self.amp_dtype = autocast_dtype(tc, self.device)
        self.channels_last = use_channels_last(tc, self.device)

        resume = self._read_resume_checkpoint()

        # ---- data: each rank's share, in an order fixed by (seed, epoch)
        train_set, val_set = build_datasets(cfg)
        self.train_videos, self.val_videos = len(train_set), len(val_set)
        if self.val_videos == 0:
            raise FramecastError(f"{cfg.data.root}: validation split {cfg.data.val_split!r} holds no videos")
        self.train_sampler = EpochSampler(
            len(train_set), rank=ctx.rank, world_size=ctx.world_size, shuffle=True, seed=tc.seed, pad=True
        )
        self.steps_per_epoch = self.train_sampler.per_rank // tc.batch_size
        if tc.max_steps_per_epoch > 0:
            self.steps_per_epoch = min(self.steps_per_epoch, tc.max_steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise FramecastError(
                f"{cfg.data.root}: the training splits {cfg.data.train_splits} hold {len(train_set)} "
                f"windows, fewer than train.batch_size={tc.batch_size} for each of {ctx.world_size} process(es)"
            )
        self.train_sampler.limit = self.steps_per_epoch * tc.batch_size  # whole batches only
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

        # ---- model, optimizer, schedule (seeded: every run of this config starts from the same weights)
        seed_everything(tc.seed)
        self.model = build_model(cfg.model, self.t_in, self.t_out).to(self.device)
        self.model.set_activation_checkpointing(tc.activation_checkpointing)
        if self.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.num_parameters = count_parameters(self.model)
        self.optimizer = build_optimizer(self.model, tc, self.device)
        self.total_steps = tc.epochs * self.steps_per_epoch
        self.schedule = LRSchedule(tc, self.total_steps)

        # ---- progress (1-based epoch numbers in files and messages; 0-based indices in loops)
        self.step = 0
        self.epoch = 0  # 1-based number of the epoch last worked on
        self.start_epoch = 0  # index of the first epoch this process runs
        self.skip_batches = 0  # batches of that epoch already consumed before a resume
        self.batches_done = 0
        self.val_loss: float | None = None
        self.best_val_loss = math.inf
        self.best_epoch = 0
        self.best_step = 0
        self.bad_validations = 0
        self.stopped = ""  # "early_stop" once patience ran out
        self.resumed_from: dict[str, int] | None = None
        if resume is not None:
            self._restore(resume)

        # ---- execution wrappers (the checkpoint always holds the plain module's weights)
        self.forward_model = torch.compile(self.model) if tc.compile else self.model
        if ctx.distributed:
            self.train_model = DistributedDataParallel(
                self.forward_model,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                gradient_as_bucket_view=True,
            )
        else:
            self.train_model = self.forward_model
        self.metrics = MetricsLog(self.run_dir, enabled=ctx.is_main)
        self._stop_signal = ""  # set by the signal handler in this process
        self._stop_signal_anywhere = False  # any process got one (agreed at each log interval)
        self._saved_step = -1
        self._last_train = (math.nan, math.nan)  # (loss, videos/s) of the latest log interval

    # ------------------------------------------------------------------ resume

    def _read_resume_checkpoint(self) -> dict[str, Any] | None:
        """``last.pt`` when present and of this very model; a corrupt one is an error, never ignored."""
        if not self.last_path.exists():
            return None
        state = load_checkpoint(self.last_path)  # FramecastError naming the file when unreadable
        saved = state.get("model_config") or {}
        wanted = dataclasses.asdict(self.cfg.model)
        for key in wanted:
            if saved.get(key) != wanted[key]:
                raise FramecastError(
                    f"{self.last_path}: holds a model with model.{key}={saved.get(key)!r} but the config "
                    f"asks for model.{key}={wanted[key]!r}; choose another run.name or remove "
                    f"{self.run_dir} to start over"
                )
        if (state.get("t_in"), state.get("t_out")) != (self.t_in, self.t_out):
            raise FramecastError(
                f"{self.last_path}: trained with data.t_in={state.get('t_in')}, data.t_out={state.get('t_out')} "
                f"but the config asks for {self.t_in}, {self.t_out}; choose another run.name"
            )
        return state

    def _restore(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])  # strict: every tensor must match
        self.optimizer.load_state_dict(state["optimizer"])
        for group in self.optimizer.param_groups:
            # The kernel choice is this machine's (fused on CUDA, foreach on CPU), not the saver's.
            for key in ("fused", "foreach"):
                if key in self.optimizer.defaults:
                    group[key] = self.optimizer.defaults[key]
        self.schedule.load_state_dict(state["scheduler"])
        restore_rng_state(state["rng"])
        self.step = int(state["step"])
        epoch, done = int(state["epoch"]), int(state["batches_done"])
        if state.get("steps_per_epoch") != self.steps_per_epoch or state.get("total_steps") != self.total_steps:
            log.warning(
                "%s: saved with %s steps per epoch (%s in all), this run has %d (%d): the data, "
                "train.batch_size, train.epochs or the number of processes changed, so the run will "
                "not match an uninterrupted one",
                self.last_path, state.get("steps_per_epoch"), state.get("total_steps"),
                self.steps_per_epoch, self.total_steps,
            )
        if done >= int(state["steps_per_epoch"]):
            self.start_epoch, self.skip_batches = epoch, 0
        else:
            self.start_epoch, self.skip_batches = epoch - 1, min(done, self.steps_per_epoch)
        self.epoch = epoch
        self.val_loss = state.get("val_loss")
        self.best_val_loss = float(state["best_val_loss"])
        self.best_epoch = int(state.get("best_epoch", 0))
        self.best_step = int(state.get("best_step", 0))
        self.bad_validations = int(state.get("bad_validations", 0))
        self.stopped = str(state.get("stopped", ""))
        self.resumed_from = {"epoch": epoch, "step": self.step, "batches_done": done}

    # ------------------------------------------------------------------ signals

    @contextlib.contextmanager
    def stop_signals(self):
        """Turn SIGTERM/SIGUSR2 into "checkpoint at the next log interval and stop".

        Only where nobody else handles them: under submitit its own handler requeues the job (and the
        epoch checkpoints are what it resumes from), and a handler set by the caller is left alone.
        """
        installed: dict[int, Any] = {}
        if not os.environ.get("SUBMITIT_EXECUTOR") and threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                if signal.getsignal(sig) is signal.SIG_DFL:
                    installed[sig] = signal.signal(sig, self._on_signal)
        try:
            yield
        finally:
            for sig, previous in installed.items():
                signal.signal(sig, previous)

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stop_signal = signal.Signals(signum).name

    # ------------------------------------------------------------------ the loop

    def fit(self) -> dict[str, Any]:
        started = time.perf_counter()
        tc = self.tc
        if self.stopped or self.start_epoch >= tc.epochs:
            log.info("%s: already finished (epoch %d, %s); nothing to train", self.last_path,
                     self.start_epoch, self.stopped or "all epochs done")
            return self._summary(started)
        if self.ctx.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.cfg, self.run_dir / CONFIG_NAME)
            self.metrics.start(self.step if self.resumed_from else None)
        if self.resumed_from:
            log.info("resuming %s from epoch %d, step %d", self.last_path, self.resumed_from["epoch"], self.step)
        log.info(
            "training %s: %s cell, %s parameters, %d train / %d val videos, %d steps per epoch, "
            "%d process(es) on %s, %s",
            self.run_dir, self.cfg.model.cell, f"{self.num_parameters:,}", self.train_videos, self.val_videos,
            self.steps_per_epoch, self.ctx.world_size, self.device, self.amp_dtype or "fp32",
        )
        self.train_model.train()
        for epoch in range(self.start_epoch, tc.epochs):
            skip, self.skip_batches = self.skip_batches, 0
            self._train_epoch(epoch, skip)
            if self.stopped:
                break
        return self._summary(started)

    def _train_epoch(self, epoch: int, skip: int) -> None:
        tc = self.tc
        self.train_sampler.set_epoch(epoch, skip * tc.batch_size)
        self._loss_sum = torch.zeros((), device=self.device)  # summed on the device: no sync per step
        self._loss_steps = 0
        self._mark = time.perf_counter()
        self.batches_done = skip
        self.epoch = epoch + 1
        bar = tqdm(
            total=self.steps_per_epoch, initial=skip, desc=f"epoch {epoch + 1}/{tc.epochs}", unit="step",
            disable=None if self.ctx.is_main else True, dynamic_ncols=True, leave=False,
        )
        with bar:
            for batch in self.train_loader:  # uint8 (B, T, H, W, C)
                lr = self.schedule.apply(self.optimizer, self.step)
                loss = train_step(
                    self.train_model, self.optimizer, batch, t_in=self.t_in, device=self.device,
                    amp_dtype=self.amp_dtype, channels_last=self.channels_last, grad_clip=tc.grad_clip,
                )
                self._loss_sum += loss
                self._loss_steps += 1
                self.step += 1
                self.batches_done += 1
                bar.update()
                validate_now = tc.val_every_steps > 0 and self.step % tc.val_every_steps == 0
                if self.step % tc.log_every_steps == 0 or validate_now or self.batches_done == self.steps_per_epoch:
                    self._log_train(epoch, lr, bar)
                if validate_now:
                    improved = self._validate(epoch)
                    self._checkpoint(epoch, improved)
                    if self.stopped:
                        return
                if self._stop_signal_anywhere:
                    if self._saved_step != self.step:
                        self._checkpoint(epoch, False)
                    raise TrainingInterrupted(
                        f"training stopped by {self._stop_signal or 'a signal to another process'} at epoch "
                        f"{epoch + 1}, step {self.step}; progress saved to {self.last_path}; "
                        "run the same command again to resume"
                    )
        if tc.val_every_steps == 0:
            improved = self._validate(epoch)
            self._checkpoint(epoch, improved)
        elif self._saved_step != self.step:
            self._checkpoint(epoch, False)

    def _log_train(self, epoch: int, lr: float, bar: tqdm) -> None:
        """Read the accumulated loss (the only host-device sync of the step loop) and log it.

        The sums of every process are added up, so all processes see the same mean loss and the same
        stop request, and take the same decisions.
        """
        if self._loss_steps == 0:
            return
        flag = 1.0 if self._stop_signal else 0.0
        extra = torch.tensor([self._loss_steps, flag], dtype=torch.float64).to(self.device, non_blocking=True)
        packed = torch.cat([self._loss_sum.reshape(1).double(), extra])  # (3,): loss sum, steps, signals
        loss_sum, steps, flags = all_reduce_sum(packed, self.ctx).tolist()
        now = time.perf_counter()
        train_loss = loss_sum / steps
        if not math.isfinite(train_loss):
            raise NonFiniteLossError(
                f"non-finite loss ({train_loss}) at epoch {epoch + 1} step {self.step} (within the last "
                f"{self._loss_steps} steps); last good checkpoint kept at {self._kept()}"
            )
        videos_per_s = self._loss_steps * self.tc.batch_size * self.ctx.world_size / max(now - self._mark, 1e-9)
        self.metrics.append({
            "kind": "train", "epoch": epoch + 1, "step": self.step, "train_loss": train_loss, "lr": lr,
            "videos_per_s": videos_per_s, "time": time.time(),
        })
        bar.set_postfix(loss=f"{train_loss:.4g}", videos_s=f"{videos_per_s:.1f}", refresh=False)
        self._last_train = (train_loss, videos_per_s)
        self._loss_sum.zero_()
        self._loss_steps = 0
        self._stop_signal_anywhere = flags > 0
        self._mark = now

    def _kept(self) -> str:
        return str(self.last_path) if self.last_path.exists() else "none (no checkpoint written yet)"

    def _validate(self, epoch: int) -> bool:
        """Mean per-video MSE over the whole validation split (all processes together)."""
        self.forward_model.eval()
        sums = validation_sums(
            self.forward_model, self.val_loader, t_in=self.t_in, device=self.device, amp_dtype=self.amp_dtype,
            channels_last=self.channels_last, max_batches=self.tc.max_val_batches,
        )
        total, count = all_reduce_sum(sums, self.ctx).tolist()
        self.forward_model.train()
        val_loss = total / count
        if not math.isfinite(val_loss):
            raise NonFiniteLossError(
                f"non-finite validation loss ({val_loss}) at epoch {epoch + 1} step {self.step}; "
                f"last good checkpoint kept at {self._kept()}"
            )
        self.val_loss = val_loss
        improved = val_loss < self.best_val_loss
        if improved:
            self.best_val_loss, self.best_epoch, self.best_step = val_loss, epoch + 1, self.step
            self.bad_validations = 0
        else:
            self.bad_validations += 1
        self.schedule.observe(val_loss)
        patience = self.tc.early_stop_patience
        if patience > 0 and self.bad_validations >= patience:
            self.stopped = "early_stop"
        lr = self.schedule.lr(self.step)
        self.metrics.append({
            "kind": "val", "epoch": epoch + 1, "step": self.step, "val_loss": val_loss,
            "best_val_loss": self.best_val_loss, "lr": lr, "time": time.time(),
        })
        self.metrics.plot()
        log.info(
            "epoch %d/%d step %d: train loss %.5g, val loss %.5g (best %.5g at epoch %d), %.1f videos/s, "
            "lr %.3g%s", epoch + 1, self.tc.epochs, self.step, self._last_train[0], val_loss,
            self.best_val_loss, self.best_epoch, self._last_train[1], lr,
            f"; no improvement for {self.bad_validations} validations, stopping early" if self.stopped else "",
        )
        self._mark = time.perf_counter()
        return improved

    def _checkpoint(self, epoch: int, improved: bool) -> None:
        """Write ``best.pt`` (when improved) then ``last.pt``, each atomically, from rank 0.

        best before last: a kill between the two leaves an older ``last.pt`` that redoes the
        improvement and rewrites ``best.pt``, never a ``last.pt`` that believes a newer best exists.
        """
        finite = torch.stack([torch.isfinite(p).all() for p in self.model.parameters()]).all()
        if not bool(finite):
            raise NonFiniteLossError(
                f"non-finite weights at epoch {epoch + 1} step {self.step}; not saved; last good "
                f"checkpoint kept at {self._kept()}"
            )
        if self.ctx.is_main:
            state = self._state(epoch)
            if improved:
                save_checkpoint(state, self.best_path)
            save_checkpoint(state, self.last_path)
        self._saved_step = self.step
        self._mark = time.perf_counter()
        if self.on_checkpoint is not None:
            self.on_checkpoint({
                "epoch": epoch + 1, "step": self.step, "batches_done": self.batches_done,
                "val_loss": self.val_loss, "model": self.model, "rank": self.ctx.rank,
            })

    def _state(self, epoch: int) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "model_config": dataclasses.asdict(self.cfg.model),
            "t_in": self.t_in,
            "t_out": self.t_out,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.schedule.state_dict(),
            "step": self.step,
            "epoch": epoch + 1,
            "batches_done": self.batches_done,
            "steps_per_epoch": self.steps_per_epoch,
            "total_steps": self.total_steps,
            "val_loss": self.val_loss,
            "best_val_loss": self.best_val_loss,
            "best_epoch": self.best_epoch,
            "best_step": self.best_step,
            "bad_validations": self.bad_validations,
            "stopped": self.stopped,
            "world_size": self.ctx.world_size,
            "parameters": self.num_parameters,
            "rng": capture_rng_state(),
            "config": config_to_dict(self.cfg),
        }

    def _summary(self, started: float) -> dict[str, Any]:
        summary = {
            "run_dir": str(self.run_dir),
            "last_checkpoint": str(self.last_path),
            "best_checkpoint": str(self.best_path) if self.best_epoch else None,
            "cell": self.cfg.model.cell,
            "parameters": self.num_parameters,
            "epochs_run": self.epoch,
            "steps": self.step,
            "val_loss": self.val_loss,
            "best_val_loss": self.best_val_loss if self.best_epoch else None,
            "best_epoch": self.best_epoch,
            "stopped": self.stopped or "completed",
            "resumed_from": self.resumed_from,
            "world_size": self.ctx.world_size,
            "device": str(self.device),
            "seconds": round(time.perf_counter() - started, 3),
        }
        log.info(
            "train done: %s, %s cell, %d epochs, %d steps, best val loss %s at epoch %d (%s), %.1f s",
            self.run_dir, summary["cell"], summary["epochs_run"], self.step,
            f"{self.best_val_loss:.5g}" if self.best_epoch else "n/a", self.best_epoch, summary["stopped"],
            summary["seconds"],
        )
        return summary
