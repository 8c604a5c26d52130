"""Training and evaluation samples: windows of ``t_in + t_out`` frames streamed out of video sources.

A sample is uint8 (t_in + t_out, H, W, C) read with one slice (one chunk of a pack); the loader
batches it to uint8 (B, T, H, W, C) and ``to_model_input`` converts it on the device, so the host
copies 4x fewer bytes than float32 would need. The index of windows is arithmetic (a few integers
per source), so memory does not grow with the number of videos.
"""
from __future__ import annotations

import atexit
import bisect
import queue
import signal
import threading
import weakref
from typing import Any, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from core.config import Config, DataConfig
from core.errors import FramecastError
from data.sources import VideoSource, open_split


class VideoWindowDataset(Dataset):
    """Windows of ``t_in + t_out`` consecutive frames from one or more sources (e.g. train + unlabeled).

    Only the first window of each video by default; every window (``num_frames - t_in - t_out + 1``
    per video) with ``all_windows``. ``t_out = 0`` gives the first ``t_in`` frames (the hidden split).
    """

    def __init__(self, sources: VideoSource | Sequence[VideoSource], t_in: int, t_out: int,
                 all_windows: bool = False, from_end: bool = False, masks: bool = False, one_hot: int = 0):
        self.sources = [sources] if isinstance(sources, VideoSource) else list(sources)
        if not self.sources:
            raise FramecastError("no video sources given to the dataset (check data.train_splits)")
        # ``masks``: a sample is (frames, class masks uint8 (t_in + t_out, H, W)) of the same window.
        # ``one_hot`` = K > 0: a sample is the masks alone as one-hot maps uint8 (T, H, W, K) of 0 / 255,
        # "frames" of K channels to a forecaster of class maps (train.task=masks).
        self.masks, self.one_hot = masks, one_hot
        for source in self.sources if masks else ():
            if not source.has_masks:
                raise FramecastError(f"{source.describe()}: holds no masks (mask.npy per video), but they are "
                                     "needed here; use labeled splits only")
        if t_in < 1 or t_out < 0:
            raise FramecastError(f"t_in must be >= 1 and t_out >= 0 (got {t_in}, {t_out})")
        self.t_in, self.t_out = t_in, t_out
        self.length = t_in + t_out
        first = self.sources[0]
        for source in self.sources:
            if source.frame_shape != first.frame_shape:
                raise FramecastError(
                    f"{source.describe()}: frames are {source.frame_shape} (H, W, C), "
                    f"but {first.describe()} has {first.frame_shape}"
                )
            if source.num_frames < self.length:
                raise FramecastError(
                    f"{source.describe()}: videos have {source.num_frames} frames, fewer than "
                    f"t_in + t_out = {t_in} + {t_out}"
                )
        self.windows_per_video = [s.num_frames - self.length + 1 if all_windows else 1 for s in self.sources]
        # The one window of each video starts at its first frame, or ends at its last (``from_end``:
        # a video's future is what follows its last frame).
        self.first_start = [s.num_frames - self.length if from_end else 0 for s in self.sources]
        # offsets[k]: index of source k's first sample.
        self.offsets = np.cumsum([0] + [len(s) * w for s, w in zip(self.sources, self.windows_per_video)]).tolist()

    @property
    def frame_shape(self) -> tuple[int, int, int]:
        if self.one_hot:
            return (*self.sources[0].frame_shape[:2], self.one_hot)
        return self.sources[0].frame_shape

    def __len__(self) -> int:
        return self.offsets[-1]

    def locate(self, index: int) -> tuple[int, int, int]:
        """Sample ``index`` -> (source number, video number in that source, first frame)."""
        if index < 0:
            index += len(self)
        if not 0 <= index < len(self):
            raise IndexError(f"sample {index} out of range for {len(self)} samples")
        k = bisect.bisect_right(self.offsets, index) - 1
        video, start = divmod(index - self.offsets[k], self.windows_per_video[k])
        return k, video, start + self.first_start[k]

    def __getitem__(self, index: int) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        k, video, start = self.locate(index)
        if self.one_hot:
            mask = self.sources[k].read_masks(video, start, start + self.length)  # (T, H, W) uint8
            return torch.from_numpy(one_hot_maps(mask, self.one_hot))
        window = self.sources[k].read(video, start, start + self.length)  # (t_in + t_out, H, W, C) uint8
        if self.masks:
            mask = self.sources[k].read_masks(video, start, start + self.length)  # (t_in + t_out, H, W) uint8
            return torch.from_numpy(window), torch.from_numpy(np.ascontiguousarray(mask))
        return torch.from_numpy(window)

    def video_name(self, index: int) -> str:
        k, video, _ = self.locate(index)
        return self.sources[k].names[video]


def one_hot_maps(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """Class ids uint8 (..., H, W) -> one-hot uint8 (..., H, W, num_classes) of 0 / 255 (1.0 as a frame)."""
    return (mask[..., None] == np.arange(num_classes, dtype=mask.dtype)).astype(np.uint8) * np.uint8(255)


def _ignore_job_signals(worker_id: int) -> None:
    """Loader workers leave SIGTERM/SIGUSR2 to the training process.

    Slurm signals the whole process group before a time limit or preemption; a worker killed by it
    would break the main process's graceful checkpoint-and-stop with "DataLoader worker exited".
    As they ignore SIGTERM, multiprocessing cannot end them at exit: ``_end_workers_at_exit`` does.
    """
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR2, signal.SIG_IGN)


# The worker iterators (torch's) of every loader that started workers. Their own: a loader can be gone
# while its iterator lives on in a reference cycle (a generator's frame, a traceback), workers and all.
_iterators_with_workers: weakref.WeakSet = weakref.WeakSet()


@atexit.register
def _end_workers_at_exit() -> None:
    """Shut down the workers still alive when the interpreter exits.

    Otherwise multiprocessing's own exit hook (registered earlier, so run later) sends them SIGTERM,
    which they ignore, and then waits for them forever: a job that finished its work and never ends.
    Runs before torch's exit hook, while torch still shuts workers down the normal way (a stop message
    each, then join).
    """
    for iterator in list(_iterators_with_workers):
        iterator._shutdown_workers()


class WindowLoader(DataLoader):
    """A DataLoader that, with worker processes and no pin-memory thread, receives batches in a thread.

    Each batch a worker sends arrives as a shared-memory tensor, and torch keeps a weak reference to
    its storage in a cache of up to 128+ entries, which keeps a small C++ object per batch alive. Made
    in the thread that computes, those objects land inside the large blocks that the step just freed
    and pin them, so glibc cannot reuse them and the heap grows by one step's allocations per batch
    (prediction RSS grew with the number of videos; benchmarks/RESULTS.md). Received in another thread
    they go to that thread's own malloc arena. The pin-memory thread of a CUDA loader already does
    this, so it is only added without one.
    """

    def __iter__(self) -> Iterator[Any]:
        batches = super().__iter__()
        if self.num_workers == 0:
            return batches
        _iterators_with_workers.add(batches)
        if not self.pin_memory:
            batches = _received_in_thread(batches)
        return self._ending_workers_on_error(batches)

    def _ending_workers_on_error(self, batches: Iterator[Any]) -> Iterator[Any]:
        """On a loader error, shut the workers down here, before the error travels on.

        Left to garbage collection (the error's traceback holds the loader's iterator in a cycle),
        the shutdown can run after its queues were finalized: the stop messages never leave, the
        workers never stop, and the process hangs at exit.
        """
        try:
            yield from batches
        except FramecastError as error:
            self.end_workers()
            raise _as_raised_in_worker(error) from None
        except Exception:
            self.end_workers()
            raise

    def end_workers(self) -> None:
        """Stop this loader's persistent workers now; the next epoch starts new ones."""
        iterator = getattr(self, "_iterator", None)  # DataLoader's persistent iterator
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        self._iterator = None


def _as_raised_in_worker(error: FramecastError) -> FramecastError:
    """The one-line error a worker raised, without the traceback text torch wraps around it.

    torch re-raises a worker's exception as ``FramecastError("Caught ... Original Traceback ...
    core.errors.FramecastError: <message>")``; a user should see just ``<message>`` (which names the
    file). An error raised in this process is returned as it is.
    """
    _, marker, message = str(error).rpartition(f"{FramecastError.__module__}.{FramecastError.__qualname__}: ")
    return FramecastError(message.strip()) if marker else error


def _received_in_thread(batches: Iterator[Any]) -> Iterator[Any]:
    """Yield ``batches`` in order, taking each from the loader in a background thread.

    A loader error (a corrupt file in a worker, say) is raised here as it was raised there; closing
    the generator early (``break``) stops the thread after the batch it is waiting for.
    """
    handoff: queue.Queue = queue.Queue(maxsize=1)  # the workers' prefetch already buffers batches
    stop = threading.Event()

    def hand_over(item: tuple[str, Any]) -> bool:
        while not stop.is_set():
            try:
                handoff.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def receive() -> None:
        try:
            for batch in batches:
                if not hand_over(("batch", batch)):
                    return
            hand_over(("end", None))
        except BaseException as error:  # handed to the consuming thread, raised there
            hand_over(("error", error))

    receiver = threading.Thread(target=receive, name="framecast-batch-receiver", daemon=True)
    receiver.start()
    try:
        while True:
            kind, item = handoff.get()
            if kind == "end":
                return
            if kind == "error":
                raise item
            yield item
    finally:
        stop.set()
        receiver.join()


def make_loader(dataset: Dataset, batch_size: int, *, shuffle: bool, num_workers: int, prefetch_factor: int,
                pin_memory: bool, drop_last: bool, sampler: Sampler | None = None, seed: int = 0) -> WindowLoader:
    """A loader of uint8 (B, T, H, W, C) batches; workers persist across epochs.

    With a ``sampler`` (training.sampler.EpochSampler: each process's share of each epoch) the
    sampler decides the order and ``shuffle`` is ignored. ``seed`` fixes the shuffle order and the workers' seeds.
    """
    generator = torch.Generator()
    generator.manual_seed(seed)
    workers = {}
    if num_workers > 0:
        workers = dict(prefetch_factor=prefetch_factor, persistent_workers=True,
                       worker_init_fn=_ignore_job_signals)
    return WindowLoader(
        dataset, batch_size=batch_size, shuffle=shuffle and sampler is None, sampler=sampler,
        num_workers=num_workers, pin_memory=pin_memory, drop_last=drop_last, generator=generator, **workers,
    )


def to_model_input(batch_uint8: torch.Tensor, device: torch.device | str, channels_last: bool = False,
                   channels: int = 3) -> torch.Tensor:
    """uint8 (B, T, H, W, 3) -> float (B, T, channels, H, W) in [0, 1] on ``device``, converted there.

    ``channels=1`` keeps only the first channel: grey data stored as RGB (each channel the same)
    trains and is scored as one channel. With ``channels_last`` the memory keeps the loaded
    (B, T, H, W, C) order (a permuted view, no layout copy): channels stay innermost in every frame
    ``x[:, t]``, as channels-last convolutions want.
    """
    if channels != batch_uint8.shape[-1]:
        batch_uint8 = batch_uint8[..., :channels]  # (B, T, H, W, channels) view
    x = batch_uint8.to(device, non_blocking=True).permute(0, 1, 4, 2, 3)  # (B, T, C, H, W) view
    if not channels_last:
        x = x.contiguous()  # still uint8: the layout copy moves a quarter of the float bytes
    return x.float().div_(255)  # .float() keeps the strides of a dense view


def build_split_dataset(data_cfg: DataConfig, split: str, masks: bool = False) -> VideoWindowDataset:
    """The first window of every video of ``split``: t_in inputs and t_out targets (and their masks)."""
    return VideoWindowDataset(open_split(data_cfg, split), data_cfg.t_in, data_cfg.t_out, masks=masks)


def check_channels(dataset: VideoWindowDataset, channels: int) -> None:
    """A one-channel model reads the first channel of RGB frames: refuse colour data for it."""
    if channels == 3:
        return
    for source in dataset.sources:
        window = source.read(0, 0, 1)  # (1, H, W, 3) of the first video
        if not (np.array_equal(window[..., 0], window[..., 1]) and np.array_equal(window[..., 0], window[..., 2])):
            raise FramecastError(
                f"{source.describe()}: model.in_channels=1 reads grey frames, but {source.names[0]} is in "
                "colour (its R, G and B differ); use model.in_channels=3"
            )


def build_segment_datasets(cfg: Config) -> tuple[VideoWindowDataset, VideoWindowDataset]:
    """(train, val) with masks, for the segmenter: train windows from ``segment.train_splits``
    (labeled splits), val from ``data.val_split``."""
    data = cfg.data
    train = VideoWindowDataset([open_split(data, s) for s in cfg.segment.train_splits], data.t_in, data.t_out,
                               data.all_windows, masks=True)
    return train, build_split_dataset(data, data.val_split, masks=True)


def build_mask_map_datasets(cfg: Config) -> tuple[VideoWindowDataset, VideoWindowDataset]:
    """(train, val) of one-hot class maps for a forecaster of masks: ``segment.train_splits`` and
    ``data.val_split``, data.num_classes channels."""
    data = cfg.data
    train = VideoWindowDataset([open_split(data, s) for s in cfg.segment.train_splits], data.t_in, data.t_out,
                               data.all_windows, one_hot=data.num_classes)
    val = VideoWindowDataset(open_split(data, data.val_split), data.t_in, data.t_out, one_hot=data.num_classes)
    return train, val


def build_datasets(cfg: Config) -> tuple[VideoWindowDataset, VideoWindowDataset]:
    """(train, val): train windows from every split of ``data.train_splits``, val from ``data.val_split``.

    Validation always uses the first window of each video, so its loss is comparable across runs.
    """
    data = cfg.data
    if not data.train_splits:
        raise FramecastError("data.train_splits is empty: name at least one split to train on")
    train = VideoWindowDataset([open_split(data, s) for s in data.train_splits], data.t_in, data.t_out,
                               data.all_windows)
    return train, build_split_dataset(data, data.val_split)
