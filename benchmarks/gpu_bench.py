"""Python side of ``benchmarks/gpu_window.sh`` (one prepared GPU window); also usable alone.

Subcommands (each writes JSON to ``--out`` and stdout; torch is imported lazily so that
``collect`` and ``budget`` start fast)::

    card        the machine: nvidia-smi query, torch / CUDA / Python versions
    check       fail-fast: mofasa imports with pymatgen / ase / spglib blocked, one bf16
                autocast training step of the autoencoder and of a latent diffusion model
    throughput  training structures/s of an autoencoder config (bf16 on/off, torch.compile)
    export      slim carry file of a checkpoint (weights only, no optimiser), split in parts
    extract-ae  the frozen autoencoder of a diffusion checkpoint as an autoencoder file
    subset      a prepared dataset cut to <= N atoms and some splits (smaller carry)
    budget      bytes left for a carried checkpoint under the 64 MiB working-tree limit
    summary     what a training run's metrics.csv says (steps, structures/s, last losses)
    collect     merge the window's stage results into one results.json

The slim writer and the dataset subsetting are product code: `export` and `subset` call
:func:`mofasa.checkpoint.slim.export_slim` and :func:`mofasa.data.subset.subset_dataset`
(imported when the subcommand runs, like torch).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
CARRY_LIMIT_BYTES = 64 * 2**20  # the device tool's cap on the working tree + carried paths
BLOCKED = ("pymatgen", "ase", "spglib")


def _dump(data: Any, out: str | None) -> None:
    text = json.dumps(data, indent=1, default=str)
    print(text, flush=True)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text + "\n")


def _sync(device: Any) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


# --------------------------------------------------------------------------------- card
def machine_card() -> dict:
    """nvidia-smi's view of the GPU(s) plus torch / CUDA / Python versions and CPU count."""
    import torch

    card: dict[str, Any] = {
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(), "torch": torch.__version__,
        "cuda_runtime": torch.version.cuda, "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "cuda_available": torch.cuda.is_available(),
    }
    # An older driver may not know every field: fall back to the basic ones.
    for query in ("name,memory.total,driver_version,clocks.max.sm,power.limit,compute_cap",
                  "name,memory.total,driver_version"):
        try:
            proc = subprocess.run(["nvidia-smi", f"--query-gpu={query}",
                                   "--format=csv,noheader"], capture_output=True, text=True,
                                  timeout=20, check=False)
        except (OSError, subprocess.TimeoutExpired) as exc:
            card["nvidia_smi"] = f"unavailable: {exc}"
            break
        card["nvidia_smi"] = [
            dict(zip(query.split(","), (x.strip() for x in line.split(",")), strict=False))
            for line in proc.stdout.strip().splitlines()] or proc.stderr[-300:]
        if proc.returncode == 0:
            break
    if torch.cuda.is_available():
        p = torch.cuda.get_device_properties(0)
        card.update(gpu=p.name, gpu_memory_gib=round(p.total_memory / 2**30, 1),
                    sm_count=p.multi_processor_count, capability=f"{p.major}.{p.minor}",
                    bf16_supported=torch.cuda.is_bf16_supported())
    return card


# -------------------------------------------------------------------------------- check
def run_check(config: str, data: str, device_name: str, batch: int) -> dict:
    """Fail-fast checks; ``ok`` is False when any failed (details under ``errors``)."""
    t0 = time.perf_counter()
    errors: list[str] = []
    import torch

    import mofasa.checkpoint
    import mofasa.cli
    import mofasa.diffusion
    import mofasa.sampling
    import mofasa.training.diffusion  # noqa: F401
    from mofasa.checkpoint import load_checkpoint, resolve_device, save_checkpoint
    from mofasa.data import collate
    from mofasa.data.dataset import CrystalDataset
    from mofasa.diffusion import DiffusionConfig, LatentDiffusion
    from mofasa.models.denoiser import Denoiser, get_denoiser_preset
    from mofasa.training.autoencoder import build_autoencoder, load_ae_config

    leaked = sorted(m for m, mod in sys.modules.items()
                    if m.split(".")[0] in BLOCKED and mod is not None)
    if leaked:
        errors.append(f"optional packages were imported: {leaked[:5]}")
    # None in sys.modules: blocked (gpu_window.sh's sitecustomize); absent: not installed
    blocked = [m for m in BLOCKED if m in sys.modules and sys.modules[m] is None]
    import_s = time.perf_counter() - t0
    device = resolve_device(device_name)
    use_bf16 = device.type == "cuda"  # the training loop autocasts on CUDA only
    cfg = load_ae_config(config, [f"data.path={data}"])
    ds = CrystalDataset(data, "train", max_atoms=cfg.data.max_atoms)
    crystals = [ds[i] for i in range(min(len(ds), batch))]
    out: dict[str, Any] = {"device": str(device), "bf16_autocast": use_bf16, "config": config,
                           "batch": len(crystals), "import_s": round(import_s, 2),
                           "blocked_modules": blocked}
    torch.manual_seed(0)
    ae = build_autoencoder(cfg.model).to(device)
    steps: dict[str, list[float]] = {}
    for name, model, make in (
        ("autoencoder", ae, None),
        ("diffusion", None, get_denoiser_preset(
            "base" if config in ("base", "large") else "tiny")),
    ):
        try:
            if make is not None:  # a random denoiser on the (random) autoencoder's latents
                import dataclasses

                den = Denoiser(dataclasses.replace(
                    make, latent_dim=ae.config.latent_dim,
                    global_latent_dim=ae.config.global_latent_dim))
                model = LatentDiffusion(ae, den, DiffusionConfig(), None).to(device)
            params = [p for p in model.parameters() if p.requires_grad]
            opt = torch.optim.AdamW(params, lr=1e-4)
            losses = []
            for _ in range(2):
                b = collate(crystals).to(device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
                    loss, _ = model(b)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                _sync(device)
                losses.append(float(loss.detach()))
                if not (torch.isfinite(loss) and torch.isfinite(norm)):
                    errors.append(f"{name}: non-finite loss {float(loss)} / grad {float(norm)}")
            steps[name] = [round(x, 5) for x in losses]
        except Exception as exc:  # report every failure, not only the first
            errors.append(f"{name}: {type(exc).__name__}: {exc}"[:500])
        finally:
            ae.requires_grad_(True)  # LatentDiffusion freezes the autoencoder it wraps
    try:  # loader worker processes need shared memory, which small VMs may lack
        from mofasa.data.dataset import make_loader

        loader = iter(make_loader(ds, 4, num_workers=2, seed=0))
        next(loader)
        next(loader)
        out["loader_workers_ok"] = True
    except Exception as exc:  # recorded; the window then trains with data.num_workers=0
        out["loader_workers_ok"] = False
        out["loader_error"] = f"{type(exc).__name__}: {exc}"[:300]
    finally:
        loader = None
    with tempfile.TemporaryDirectory() as tmp:  # weights_only round trip of the parts format
        w = torch.randn(300, 100)
        save_checkpoint({"kind": "check", "w": w}, Path(tmp) / "c.pt", max_part_bytes=50_000)
        if not torch.equal(load_checkpoint(Path(tmp) / "c.pt")["w"], w):
            errors.append("checkpoint parts round trip changed the tensor")
    if device.type == "cuda":
        out["peak_mib"] = round(torch.cuda.max_memory_allocated(device) / 2**20, 1)
    out.update(losses=steps, seconds=round(time.perf_counter() - t0, 2), errors=errors,
               ok=not errors)
    return out


# --------------------------------------------------------------------------- throughput
def run_throughput(config: str, data: str, device: str, steps: int, bf16: bool,
                   compile_: bool, log_every: int, max_seconds: float,
                   overrides: list[str]) -> dict:
    """Train ``steps`` steps (no checkpoint writing) and read structures/s from the log."""
    import torch

    from mofasa.config import to_dict
    from mofasa.data.dataset import CrystalDataset
    from mofasa.training.autoencoder import build_autoencoder, load_ae_config
    from mofasa.training.loop import Trainer

    class _NoSave(Trainer):
        def save(self) -> None:  # timing only: a 100 MB checkpoint write is not training
            pass

    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_ae_config(config, [
            f"data.path={data}", f"run.out_dir={tmp}", f"run.bf16={str(bf16).lower()}",
            f"run.compile={str(compile_).lower()}", f"run.log_every={log_every}",
            f"run.device={device}", f"run.max_time_s={max_seconds}",
            "run.ckpt_every=1000000000", "run.val_every=1000000000", *overrides])
        train = CrystalDataset(cfg.data.path, cfg.data.train_split, translate=cfg.data.translate,
                               seed=cfg.run.seed, max_atoms=cfg.data.max_atoms)
        torch.manual_seed(cfg.run.seed)
        trainer = _NoSave(build_autoencoder(cfg.model), kind="autoencoder", config=to_dict(cfg),
                          data=cfg.data, optim=cfg.optim, run=cfg.run)
        t0 = time.perf_counter()
        last = trainer.fit(train, None, stop_after=steps)
        wall = time.perf_counter() - t0
        summary = summarize_metrics(Path(tmp) / "metrics.csv")
    out = {"config": config, "bf16": bf16, "compile": compile_, "device": str(trainer.device),
           "steps": trainer.step, "batch_size": cfg.data.batch_size,
           "max_atoms_per_batch": cfg.data.max_atoms_per_batch, "wall_s": round(wall, 2),
           "last_loss": last.get("loss"), **summary}
    if trainer.device.type == "cuda":
        out["peak_mib"] = round(torch.cuda.max_memory_allocated() / 2**20, 1)
    return out


def summarize_metrics(path: str | Path) -> dict:
    """Steps, structures/s (median over log windows after the first, which holds warm-up and
    compilation) and the last train / val metrics of a metrics.csv."""
    path = Path(path)
    if not path.is_file():
        return {"metrics": "missing"}
    rows = list(csv.DictReader(path.open(newline="")))
    speeds = [float(r["value"]) for r in rows
              if r["split"] == "train" and r["name"] == "structures_per_s"]
    last: dict[str, dict[str, float]] = {"train": {}, "val": {}}
    for r in rows:
        last.setdefault(r["split"], {})[r["name"]] = float(r["value"])
    steady = speeds[1:] or speeds
    return {"logged_steps": max((int(r["step"]) for r in rows), default=0),
            "structures_per_s_windows": [round(s, 1) for s in speeds],
            "structures_per_s_median": round(statistics.median(steady), 1) if steady else None,
            "last_train": last["train"], "last_val": last["val"]}


# --------------------------------------------------------------------------- extract-ae
def extract_autoencoder(src: str | Path, out: str | Path) -> dict:
    """The frozen autoencoder inside a diffusion checkpoint as an autoencoder checkpoint
    (`mofasa.checkpoint.extract_autoencoder`), so that a diffusion run can warm-start from a
    diffusion slim file (``train diffusion --autoencoder OUT run.init_from=SRC``)."""
    from mofasa.checkpoint import checkpoint_exists, load_checkpoint
    from mofasa.checkpoint import extract_autoencoder as extract

    extract(src, out)
    files = [Path(out)] if Path(out).is_file() else sorted(Path(out).parent.glob(
        Path(out).name + ".part*"))
    assert checkpoint_exists(out)
    return {"path": str(out), "bytes": sum(f.stat().st_size for f in files),
            "autoencoder_source": load_checkpoint(src)["autoencoder"].get("source")}


# ------------------------------------------------------------------------------- budget
_SKIP_DIRS = {".git", ".venv", "runs", "prepared", "__pycache__", ".pytest_cache",
              ".ruff_cache", "build", "dist", "out", ".whl", ".gl"}


def tree_bytes(root: str | Path) -> int:
    """Bytes of the working tree that travels anyway (tracked + untracked-not-ignored):
    from git where it works, else a walk that skips the ignored folders."""
    root = Path(root)
    try:
        proc = subprocess.run(["git", "ls-files", "-z", "-co", "--exclude-standard"],
                              cwd=root, capture_output=True, timeout=20, check=True)
        names = [n for n in proc.stdout.decode().split("\0") if n]
        return sum((root / n).stat().st_size for n in names if (root / n).is_file())
    except (OSError, subprocess.SubprocessError):
        total = 0
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = [d for d in dirnames if d not in _SKIP_DIRS
                           and not d.endswith(".egg-info")]
            total += sum(os.path.getsize(os.path.join(dirpath, f)) for f in filenames
                         if not f.endswith(".pyc"))
        return total


def carry_budget(root: str | Path, data: list[str], margin: int = 3 * 2**20) -> dict:
    """Bytes left for a carried checkpoint next time: 64 MiB minus the tree and the data,
    less a margin for the tree's growth between this call and the next."""
    tree = tree_bytes(root)
    data_bytes = sum(f.stat().st_size for d in data for f in Path(d).rglob("*") if f.is_file())
    left = CARRY_LIMIT_BYTES - tree - data_bytes - margin
    return {"limit": CARRY_LIMIT_BYTES, "tree_bytes": tree, "data_bytes": data_bytes,
            "margin": margin, "checkpoint_budget_bytes": left}


# ------------------------------------------------------------------------------ collect
def collect(work: str | Path, out: str | Path, extra: dict | None = None) -> dict:
    """Merge ``work/res_*.json`` (one per stage) and ``work/stages.jsonl`` into ``out``."""
    work = Path(work)
    merged: dict[str, Any] = dict(extra or {})
    stages = work / "stages.jsonl"
    if stages.is_file():
        merged["stages"] = [json.loads(line) for line in stages.read_text().splitlines()
                            if line.strip()]
    for f in sorted(work.glob("res_*.json")):
        try:
            merged[f.stem[4:]] = json.loads(f.read_text())
        except json.JSONDecodeError as exc:
            merged[f.stem[4:]] = {"error": f"unreadable: {exc}", "text": f.read_text()[-2000:]}
    tmp = Path(str(out) + ".tmp")
    tmp.write_text(json.dumps(merged, indent=1) + "\n")
    os.replace(tmp, out)
    return merged


# --------------------------------------------------------------------------------- main
def _layout(name: str) -> str:
    """argparse type of ``export --layout``: checked against the package's layouts, imported
    only when the option is given (so that the other subcommands start without torch)."""
    from mofasa.checkpoint.slim import LAYOUTS

    if name not in LAYOUTS:
        raise argparse.ArgumentTypeError(f"unknown layout {name!r}; choose {sorted(LAYOUTS)}")
    return name


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("card")
    c.add_argument("--out")
    c = sub.add_parser("check")
    c.add_argument("--config", default="base")
    c.add_argument("--data", default="prepared/qmof")
    c.add_argument("--device", default="auto")
    c.add_argument("--batch", type=int, default=16)
    c.add_argument("--out")
    c = sub.add_parser("throughput")
    c.add_argument("--config", default="base")
    c.add_argument("--data", default="prepared/qmof")
    c.add_argument("--device", default="auto")
    c.add_argument("--steps", type=int, default=60)
    c.add_argument("--log-every", type=int, default=10)
    c.add_argument("--bf16", type=int, default=1)
    c.add_argument("--compile", type=int, default=0)
    c.add_argument("--max-seconds", type=float, default=120.0)
    c.add_argument("--out")
    c.add_argument("overrides", nargs="*")
    c = sub.add_parser("export")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--layout", default=None, type=_layout,
                   help="slim layout (mofasa.checkpoint.slim.LAYOUTS; default: by kind)")
    c.add_argument("--frozen", default="bf16", choices=("fp32", "bf16"))
    c.add_argument("--max-bytes", type=int, default=None)
    c.add_argument("--budget-data", nargs="*", default=None,
                   help="data folders carried with the file: --max-bytes = what 64 MiB "
                        "leaves beside them and the working tree")
    c.add_argument("--out")
    c = sub.add_parser("extract-ae")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--out")
    c = sub.add_parser("subset")
    c.add_argument("src")
    c.add_argument("dst")
    c.add_argument("--max-atoms", type=int, default=150)
    c.add_argument("--splits", nargs="+", default=["train", "val"])
    c.add_argument("--out")
    c = sub.add_parser("budget")
    c.add_argument("--root", default=str(ROOT))
    c.add_argument("--data", nargs="*", default=[])
    c.add_argument("--out")
    c = sub.add_parser("summary")
    c.add_argument("metrics")
    c.add_argument("--out")
    c = sub.add_parser("collect")
    c.add_argument("work")
    c.add_argument("out")
    c.add_argument("--extra", default="{}", help="JSON object merged in (mode, budgets)")
    args = p.parse_args(argv)

    if args.cmd == "card":
        _dump(machine_card(), args.out)
    elif args.cmd == "check":
        try:
            res = run_check(args.config, args.data, args.device, args.batch)
        except Exception:  # still a JSON verdict for results.json, with the traceback
            import traceback

            res = {"ok": False, "device": args.device, "errors": [traceback.format_exc()[-3000:]]}
        _dump(res, args.out)
        return 0 if res["ok"] else 1
    elif args.cmd == "throughput":
        _dump(run_throughput(args.config, args.data, args.device, args.steps, bool(args.bf16),
                             bool(args.compile), args.log_every, args.max_seconds,
                             args.overrides), args.out)
    elif args.cmd == "export":
        budget = None
        max_bytes = args.max_bytes
        if args.budget_data is not None:
            budget = carry_budget(ROOT, args.budget_data)
            max_bytes = min(max_bytes or budget["checkpoint_budget_bytes"],
                            budget["checkpoint_budget_bytes"])
        from mofasa.checkpoint.slim import export_slim

        info = export_slim(args.src, args.dst, layout=args.layout, frozen=args.frozen,
                           max_bytes=max_bytes)
        _dump({**info, "carry_budget": budget}, args.out)
    elif args.cmd == "extract-ae":
        _dump(extract_autoencoder(args.src, args.dst), args.out)
    elif args.cmd == "subset":
        from mofasa.data.subset import subset_dataset

        _dump(subset_dataset(args.src, args.dst, args.max_atoms, tuple(args.splits)), args.out)
    elif args.cmd == "budget":
        _dump(carry_budget(args.root, args.data), args.out)
    elif args.cmd == "summary":
        _dump(summarize_metrics(args.metrics), args.out)
    elif args.cmd == "collect":
        collect(args.work, args.out, json.loads(args.extra))
    return 0


if __name__ == "__main__":
    sys.exit(main())
