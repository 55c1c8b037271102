"""A plain PyTorch training loop shared by the autoencoder and the diffusion model.

Features: AdamW, linear warm-up + cosine decay, gradient clipping, EMA weights, bf16 autocast on
GPU, optional ``torch.compile``, size-bucketed batches, torchrun / DDP, a long-format metrics CSV
and PNG curves, atomic checkpoints every K steps and on SIGTERM, and exact resume (model, EMA,
optimiser, RNG state and the position inside the epoch are restored). A fresh run can instead
warm-start from another checkpoint's weights (``run.init_from``): model and EMA weights only,
with a new optimiser, e.g. from a slim file carried back from a GPU machine.

The model's ``forward(batch)`` must return ``(loss, metrics)`` with ``metrics`` a dict of floats.
"""

from __future__ import annotations

import copy
import csv
import json
import math
import os
import platform
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mofasa.checkpoint import checkpoint_exists, load_checkpoint, resolve_device, save_checkpoint
from mofasa.data.batch import CrystalBatch
from mofasa.data.dataset import CrystalDataset, make_loader
from mofasa.data.elements import VOCAB_SYMBOLS

__all__ = ["DataConfig", "OptimConfig", "RunConfig", "Trainer", "split_datasets"]

# Extra-state entries that describe the weights rather than the training data: a warm start
# takes them from its source so that the new checkpoints stay self-consistent.
WEIGHT_STATE_KEYS = ("latent_stats", "autoencoder")


@dataclass(frozen=True)
class DataConfig:
    path: str = "prepared/qmof"
    max_atoms: int = 150
    batch_size: int = 32
    max_atoms_per_batch: int | None = None
    num_workers: int = 0
    translate: bool = True
    train_split: str = "train"
    val_split: str = "val"


@dataclass(frozen=True)
class OptimConfig:
    lr: float = 3e-4
    weight_decay: float = 0.01
    betas: tuple[float, ...] = (0.9, 0.99)
    warmup_steps: int = 500
    total_steps: int = 20000
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    ema_decay: float = 0.999
    # "cosine": warm-up, cosine decay to min_lr_ratio at total_steps; "wsd" (warm-up, stable,
    # decay): constant after warm-up, then linear to min_lr_ratio over the last decay_steps
    # (a cool-down branch of a long run: resume a copy with a nearer total_steps)
    schedule: str = "cosine"
    decay_steps: int = 0

    def __post_init__(self) -> None:
        if self.schedule not in ("cosine", "wsd") or self.decay_steps < 0:
            raise ValueError(f"optim.schedule must be 'cosine' or 'wsd' and decay_steps >= 0, "
                             f"got {self.schedule!r}, {self.decay_steps}")


@dataclass(frozen=True)
class RunConfig:
    out_dir: str = "runs/autoencoder"
    seed: int = 0
    log_every: int = 25
    ckpt_every: int = 500
    val_every: int = 500
    val_batches: int = 20
    device: str = "auto"
    bf16: bool = True  # autocast on CUDA only (slower than fp32 on most CPUs)
    compile: bool = False
    max_time_s: float | None = None  # stop (and checkpoint) after this much training time
    threads: int = 0  # CPU threads (0: torch default)
    # Fresh runs only (no own checkpoint resumed): model / EMA weights from this checkpoint
    # (a full one or a slim weights-only one), new optimiser, step count from 0.
    init_from: str = ""
    init_keep_step: bool = False  # with init_from: continue the source's step (LR schedule)
    # with init_from: modules the source lacks (e.g. newly added condition inputs) keep their
    # fresh initialisation; without it every parameter must come from the source
    init_allow_new: bool = False


def split_datasets(data: DataConfig, seed: int) -> tuple[CrystalDataset, CrystalDataset]:
    """(train split with its translation augmentation, val split) of ``data.path``, both
    filtered to ``data.max_atoms``.

    Raises:
        ValueError: the training split holds no structure within the atom limit.
    """
    train = CrystalDataset(data.path, data.train_split, translate=data.translate, seed=seed,
                           max_atoms=data.max_atoms)
    if len(train) == 0:
        raise ValueError(f"{data.path}: no training structures with <= {data.max_atoms} atoms")
    return train, CrystalDataset(data.path, data.val_split, max_atoms=data.max_atoms)


class _Distributed:
    """torchrun environment: rank / world size, process group set-up and tear-down."""

    def __init__(self, device: torch.device) -> None:
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world > 1
        if self.enabled and not torch.distributed.is_initialized():
            backend = "nccl" if device.type == "cuda" else "gloo"
            torch.distributed.init_process_group(backend)

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.enabled and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def lr_factor(step: int, warmup: int, total: int, min_ratio: float,
              schedule: str = "cosine", decay_steps: int = 0) -> float:
    """Linear warm-up to 1, then cosine decay to ``min_ratio`` at ``total``; or (``wsd``) 1
    until ``total - decay_steps``, then linear to ``min_ratio`` at ``total``."""
    if step < warmup:
        return (step + 1) / max(1, warmup)
    if schedule == "wsd":
        left = total - step
        if left >= decay_steps:
            return 1.0
        return min_ratio + (1 - min_ratio) * max(0, left) / max(1, decay_steps)
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


class Trainer:
    """Train ``model`` on a prepared dataset; see the module docstring.

    Args:
        model: ``forward(batch) -> (loss, metrics)``.
        kind: checkpoint kind, e.g. ``"autoencoder"``.
        config: the full run config as a plain dict (stored in checkpoints and run.json).
        data, optim, run: the sections of that config the loop uses.
        extra_state: tensors / plain values stored in every checkpoint (e.g. data statistics).
        batch_transform: optional function applied to each batch on the device.
        probe_fn: optional ``model -> {name: value}`` run on the EMA model every
            ``probe_every`` steps and logged under the split ``probe``.
        probe_every: steps between probes (0: never).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        kind: str,
        config: dict,
        data: DataConfig,
        optim: OptimConfig,
        run: RunConfig,
        extra_state: dict | None = None,
        batch_transform: Callable[[CrystalBatch], Any] | None = None,
        probe_fn: Callable[[nn.Module], dict[str, float]] | None = None,
        probe_every: int = 0,
    ) -> None:
        self.kind, self.config = kind, config
        self.data_cfg, self.optim_cfg, self.run_cfg = data, optim, run
        self.extra_state = extra_state or {}
        self.batch_transform = batch_transform
        self.probe_fn, self.probe_every = probe_fn, probe_every
        self.probe_seconds = 0.0  # wall time spent probing in this call (not training)
        if run.threads:
            torch.set_num_threads(run.threads)
        self.device = resolve_device(run.device)
        self.dist = _Distributed(self.device)
        if self.device.type == "cuda" and self.dist.enabled:
            self.device = torch.device("cuda", self.dist.local_rank)
        torch.manual_seed(run.seed + self.dist.rank)
        self.model = model.to(self.device)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False)
        self.optimizer = self._make_optimizer()
        self.step, self.epoch, self.batch_in_epoch = 0, 0, 0
        # Steps of earlier runs this one continues by warm start (step restarts at 0 there).
        self.prior_steps = 0
        self.init_info: dict | None = None  # where a warm start took its weights from
        self._restored = False  # resumed or warm-started: fit() must not warm-start again
        self.out = Path(run.out_dir)
        self.ckpt_path = self.out / "checkpoint.pt"
        self._stop = False

    # ------------------------------------------------------------------ set-up
    def _make_optimizer(self) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            if p.requires_grad:
                (no_decay if p.ndim < 2 or "embed" in name else decay).append(p)
        groups = [
            {"params": decay, "weight_decay": self.optim_cfg.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        return torch.optim.AdamW(groups, lr=self.optim_cfg.lr, betas=tuple(self.optim_cfg.betas))

    def _wrapped(self) -> nn.Module:
        module: nn.Module = self.model
        if self.dist.enabled:
            ids = [self.device.index] if self.device.type == "cuda" else None
            # a model whose steps may leave parameters without gradient (self-conditioning
            # skips its inputs in half the batches) says so; DDP must then search for them
            unused = bool(getattr(module, "optional_parameters", False))
            module = nn.parallel.DistributedDataParallel(module, device_ids=ids,
                                                         find_unused_parameters=unused)
        if self.run_cfg.compile:
            module = torch.compile(module)
        return module

    # ------------------------------------------------------------------ checkpoints
    def state(self) -> dict:
        from mofasa import __version__

        return {
            "kind": self.kind,
            "mofasa_version": __version__,
            "config": self.config,
            "model": self.model.state_dict(),
            "ema": self.ema.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "cumulative_step": self.prior_steps + self.step,
            "init_from": self.init_info,
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "rng": {"torch": torch.get_rng_state()},
            "vocab": list(VOCAB_SYMBOLS),
            **self.extra_state,
        }

    def save(self) -> None:
        if self.dist.main:
            save_checkpoint(self.state(), self.ckpt_path)
            self._plot()

    def resume(self, path: str | Path | None = None) -> bool:
        """Restore everything from ``path`` (default: the run's own checkpoint) if present."""
        path = Path(path) if path else self.ckpt_path
        if not checkpoint_exists(path):
            return False
        ckpt = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(ckpt["model"])
        self.ema.load_state_dict(ckpt["ema"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step, self.epoch = int(ckpt["step"]), int(ckpt["epoch"])
        self.batch_in_epoch = int(ckpt["batch_in_epoch"])
        self.prior_steps = int(ckpt.get("cumulative_step", self.step)) - self.step
        self.init_info = ckpt.get("init_from")
        torch.set_rng_state(ckpt["rng"]["torch"].cpu())
        self._truncate_log(self.step)
        self._restored = True
        return True

    def warm_start(self, path: str | Path) -> dict:
        """Load model and EMA weights from checkpoint ``path`` (``weights_only`` loading);
        the optimiser stays fresh and the step count starts at 0 (``run.init_keep_step``:
        at the source's step). ``fit`` calls this for a fresh run with ``run.init_from`` set.

        The source may be a training checkpoint or a slim file holding ``model`` and/or
        ``ema`` (either may be bf16: loading casts to the parameters' dtype); a missing one is
        taken from the other.

        Returns:
            ``{"path", "step", "cumulative_step"}`` of the source (also kept in checkpoints).

        Raises:
            ValueError: another checkpoint kind, or no weights in the file.
        """
        ckpt = load_checkpoint(path, map_location=self.device)
        if ckpt.get("kind") != self.kind:
            raise ValueError(f"{path}: checkpoint kind {ckpt.get('kind')!r}, "
                             f"expected {self.kind!r}")
        model_state = ckpt.get("model") or ckpt.get("ema")
        ema_state = ckpt.get("ema") or model_state
        if not model_state:
            raise ValueError(f"{path}: no model or ema weights to start from")
        # strict unless new modules are allowed: a sampling-only export (encoder dropped)
        # cannot be trained on; unexpected keys are always an error
        strict = not self.run_cfg.init_allow_new
        missing, unexpected = self.model.load_state_dict(model_state, strict=strict)
        self.ema.load_state_dict(ema_state, strict=strict)
        if unexpected:
            raise ValueError(f"{path}: weights this model does not have: {unexpected[:5]}")
        if missing and self.dist.main:
            print(f"warm start: {len(missing)} new tensors keep their initialisation "
                  f"({', '.join(sorted({k.rsplit('.', 1)[0] for k in missing})[:6])})")
        src_step = int(ckpt.get("step", 0))
        src_total = int(ckpt.get("cumulative_step", src_step))
        self.step = src_step if self.run_cfg.init_keep_step else 0
        self.epoch, self.batch_in_epoch = 0, 0
        self.prior_steps = src_total - self.step
        for key in WEIGHT_STATE_KEYS:
            if key in ckpt and key in self.extra_state:
                self.extra_state[key] = ckpt[key]
        self.init_info = {"path": str(path), "step": src_step, "cumulative_step": src_total}
        self._restored = True
        if self.dist.main:
            print(f"warm start from {path} (its step {src_step}, {src_total} in all); "
                  f"fresh optimiser, step {self.step}")
        return self.init_info

    # ------------------------------------------------------------------ logging
    def _log(self, rows: list[tuple[int, str, str, float]]) -> None:
        if not self.dist.main:
            return
        path = self.out / "metrics.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.writer(fh)
            if new:
                writer.writerow(["step", "split", "name", "value"])
            writer.writerows(rows)

    def _truncate_log(self, step: int) -> None:
        """Drop log rows past the checkpoint so a resumed run logs no step twice."""
        path = self.out / "metrics.csv"
        if not path.exists() or not self.dist.main:
            return
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        keep = [rows[0]] + [r for r in rows[1:] if int(r[0]) <= step]
        tmp = path.with_name("metrics.csv.tmp")
        with open(tmp, "w", newline="") as fh:
            csv.writer(fh).writerows(keep)
        os.replace(tmp, path)

    def _plot(self) -> None:
        from mofasa.training.curves import plot_metrics

        try:
            plot_metrics(self.out / "metrics.csv", self.out / "curves.png")
        except Exception as exc:  # a plotting failure must never stop training
            print(f"warning: could not plot curves: {exc}")

    def _write_run_json(self) -> None:
        if not self.dist.main:
            return
        try:
            rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                 check=False, timeout=5).stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            rev = ""
        from mofasa import __version__

        info = {
            "kind": self.kind, "config": self.config, "seed": self.run_cfg.seed,
            "git_revision": rev, "mofasa": __version__, "torch": torch.__version__,
            "python": platform.python_version(), "device": str(self.device),
            "world_size": self.dist.world,
            "parameters": sum(p.numel() for p in self.model.parameters()),
        }
        (self.out / "run.json").write_text(json.dumps(info, indent=1))

    # ------------------------------------------------------------------ the loop
    def fit(self, train: CrystalDataset, val: CrystalDataset | None = None,
            stop_after: int | None = None) -> dict[str, float]:
        """Train until ``optim.total_steps`` (or ``stop_after`` steps in this call, the time
        limit, or SIGTERM), checkpointing on the way out. Returns the last logged metrics."""
        if self.run_cfg.init_from and not self._restored:
            self.warm_start(self.run_cfg.init_from)
        self.out.mkdir(parents=True, exist_ok=True)
        self._write_run_json()
        self._install_sigterm()
        loader = make_loader(
            train, self.data_cfg.batch_size, max_atoms_per_batch=self.data_cfg.max_atoms_per_batch,
            seed=self.run_cfg.seed, num_workers=self.data_cfg.num_workers,
        )
        module = self._wrapped()
        start_time, start_step = time.perf_counter(), self.step
        last: dict[str, float] = {}
        bar = self._progress()
        try:
            while self.step < self.optim_cfg.total_steps and not self._stop:
                last = self._epoch(module, loader, val, bar, start_time, start_step, stop_after)
                if self._stop:
                    break
                self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        finally:
            bar.close()
            self.save()
            self.dist.close()
        return last

    def _progress(self) -> Any:
        from tqdm import tqdm

        return tqdm(total=self.optim_cfg.total_steps, initial=self.step, unit="step",
                    disable=not self.dist.main, desc=self.kind, smoothing=0.1)

    def _epoch(self, module: nn.Module, loader: Any, val: CrystalDataset | None, bar: Any,
               start_time: float, start_step: int, stop_after: int | None) -> dict[str, float]:
        sampler = loader.batch_sampler
        sampler.set_epoch(self.epoch)
        sampler.start = self.batch_in_epoch  # skip what a resumed run already did
        last: dict[str, float] = {}
        t0, seen = time.perf_counter(), 0
        for batch in loader:
            last = self._train_step(module, batch)
            seen += batch.batch_size
            self.step += 1
            self.batch_in_epoch += 1
            bar.update(1)
            if self.step % self.run_cfg.log_every == 0:
                last["structures_per_s"] = seen * self.dist.world / (time.perf_counter() - t0)
                self._log([(self.step, "train", k, v) for k, v in last.items()])
                bar.set_postfix(loss=f"{last['loss']:.4f}")
                t0, seen = time.perf_counter(), 0
            if val is not None and self.step % self.run_cfg.val_every == 0:
                self._log([(self.step, "val", k, v) for k, v in self.validate(val).items()])
            if self.probe_fn is not None and self.probe_every and \
                    self.step % self.probe_every == 0:
                self._log([(self.step, "probe", k, v) for k, v in self.probe().items()])
            if self.step % self.run_cfg.ckpt_every == 0:
                self.save()
            if self._should_stop(start_time, start_step, stop_after):
                self._stop = True
                break
        return last

    def _should_stop(self, start_time: float, start_step: int, stop_after: int | None) -> bool:
        if self.step >= self.optim_cfg.total_steps or self._stop:
            return True
        if stop_after is not None and self.step - start_step >= stop_after:
            return True
        limit = self.run_cfg.max_time_s
        # probes are measurements, not training: their time does not count against the budget
        spent = time.perf_counter() - start_time - self.probe_seconds
        return limit is not None and spent > limit

    def _train_step(self, module: nn.Module, batch: CrystalBatch) -> dict[str, float]:
        self.model.train()
        batch = batch.to(self.device)
        if self.batch_transform is not None:
            batch = self.batch_transform(batch)
        for group in self.optimizer.param_groups:
            group["lr"] = self.optim_cfg.lr * lr_factor(
                self.step, self.optim_cfg.warmup_steps, self.optim_cfg.total_steps,
                self.optim_cfg.min_lr_ratio, self.optim_cfg.schedule, self.optim_cfg.decay_steps)
        use_bf16 = self.run_cfg.bf16 and self.device.type == "cuda"
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            loss, metrics = module(batch)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = nn.utils.clip_grad_norm_(self.model.parameters(), self.optim_cfg.grad_clip)
        self.optimizer.step()
        self._update_ema()
        out = {"loss": float(loss.detach()), "grad_norm": float(grad_norm),
               "lr": self.optimizer.param_groups[0]["lr"]}
        out.update({k: float(v) for k, v in metrics.items() if k != "loss"})
        return out

    @torch.no_grad()
    def _update_ema(self) -> None:
        decay = min(self.optim_cfg.ema_decay, (1 + self.step) / (10 + self.step))
        for e, p in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            e.lerp_(p.detach(), 1.0 - decay)
        for e, b in zip(self.ema.buffers(), self.model.buffers(), strict=True):
            e.copy_(b)

    @torch.no_grad()
    def validate(self, val: CrystalDataset) -> dict[str, float]:
        """Mean metrics of the EMA model over the first ``run.val_batches`` validation batches."""
        loader = make_loader(val, self.data_cfg.batch_size, shuffle=False, seed=0)
        totals: dict[str, float] = {}
        count = 0
        # Validation must not disturb the training RNG stream (exact resume depends on it).
        state = torch.get_rng_state()
        for k, batch in enumerate(loader):
            if k >= self.run_cfg.val_batches:
                break
            batch = batch.to(self.device)
            if self.batch_transform is not None:
                batch = self.batch_transform(batch)
            loss, metrics = self.ema(batch)
            values = {"loss": float(loss), **{m: float(x) for m, x in metrics.items()}}
            for key, v in values.items():
                totals[key] = totals.get(key, 0.0) + v
            count += 1
        torch.set_rng_state(state)
        return {k: v / max(1, count) for k, v in totals.items()}

    @torch.no_grad()
    def probe(self) -> dict[str, float]:
        """``probe_fn`` on the EMA model (main process only; the training RNG is untouched),
        plus the seconds it took."""
        if not self.dist.main or self.probe_fn is None:
            return {}
        state, t0 = torch.get_rng_state(), time.perf_counter()
        out = dict(self.probe_fn(self.ema))
        torch.set_rng_state(state)
        out["probe_seconds"] = time.perf_counter() - t0
        self.probe_seconds += out["probe_seconds"]
        return out

    def _install_sigterm(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum: int, frame: object) -> None:
            self._stop = True  # finish the current step, checkpoint, exit

        signal.signal(signal.SIGTERM, handler)
