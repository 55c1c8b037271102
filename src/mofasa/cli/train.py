"""``mofasa train autoencoder``, ``mofasa train diffusion`` and ``mofasa train coordflow``."""

from __future__ import annotations

import argparse
import json

__all__ = ["add_train_parser"]

_OVERRIDES_HELP = (
    "CONFIG is a shipped name or a YAML file; overrides are dotted key=value pairs, checked "
    "against the config's types (e.g. optim.lr=1e-4 data.path=prepared/qmof run.out_dir=runs/x). "
    "Works under torchrun for multi-GPU / multi-node DDP (gloo on CPU)."
)


def add_train_parser(commands: argparse._SubParsersAction) -> None:
    """Add ``train`` (with ``autoencoder`` and ``diffusion``) to the top-level subparsers."""
    train = commands.add_parser("train", help="train the autoencoder or a generative model")
    kinds = train.add_subparsers(dest="train_command", metavar="MODEL")
    ae = kinds.add_parser(
        "autoencoder", help="train the crystal autoencoder",
        description="Train (or resume) the GNS autoencoder (shipped configs: tiny, small, base, "
        "large). " + _OVERRIDES_HELP,
    )  # fmt: skip
    _common(ae)
    ae.add_argument("--init", default=None,
                    help="initial weights from another autoencoder checkpoint (when not resuming)")
    ae.set_defaults(func=_cmd_train_autoencoder)
    dm = kinds.add_parser(
        "diffusion", help="train the latent diffusion model",
        description="Train (or resume) the latent diffusion model on the frozen autoencoder's "
        "latents (shipped configs: tiny, small, base). A resumed run needs no --autoencoder "
        "(its checkpoint embeds it). " + _OVERRIDES_HELP,
    )  # fmt: skip
    dm.add_argument("--autoencoder", default=None,
                    help="autoencoder checkpoint (default: the config's 'autoencoder' key)")
    _common(dm)
    dm.set_defaults(func=_cmd_train_diffusion)
    cf = kinds.add_parser(
        "coordflow", help="train the explicit-coordinate model (the default family)",
        description="Train (or resume) the explicit-coordinate flow model: fractional "
        "coordinates on the torus, type codes and the lattice, no autoencoder (shipped "
        "configs: tiny, small, cond; 'cond' trains every condition in one model). "
        + _OVERRIDES_HELP,
    )  # fmt: skip
    _common(cf)
    cf.set_defaults(func=_cmd_train_coordflow)
    train.set_defaults(func=lambda _args: (train.print_help(), 2)[1])


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", default="small", help="shipped config name or YAML path")
    p.add_argument("overrides", nargs="*", help="dotted key=value overrides")
    p.add_argument("--no-resume", action="store_true",
                   help="start fresh even if run.out_dir holds a checkpoint")
    p.add_argument("--stop-after", type=int, default=None,
                   help="stop (with a checkpoint) after this many steps in this call")


def _cmd_train_autoencoder(args: argparse.Namespace) -> int:
    from mofasa.training.autoencoder import load_ae_config, train_autoencoder

    cfg = load_ae_config(args.config, args.overrides)
    metrics = train_autoencoder(cfg, resume=not args.no_resume, init=args.init,
                                stop_after=args.stop_after)
    print(json.dumps({"out_dir": cfg.run.out_dir, **metrics}, indent=1))
    return 0


def _cmd_train_diffusion(args: argparse.Namespace) -> int:
    from mofasa.training.diffusion import load_diffusion_config, train_diffusion

    cfg = load_diffusion_config(args.config, args.overrides)
    metrics = train_diffusion(cfg, args.autoencoder, resume=not args.no_resume,
                              stop_after=args.stop_after)
    print(json.dumps({"out_dir": cfg.run.out_dir, **metrics}, indent=1))
    return 0


def _cmd_train_coordflow(args: argparse.Namespace) -> int:
    from mofasa.training.coordflow import load_coordflow_config, train_coordflow

    cfg = load_coordflow_config(args.config, args.overrides)
    metrics = train_coordflow(cfg, resume=not args.no_resume, stop_after=args.stop_after)
    print(json.dumps({"out_dir": cfg.run.out_dir, **metrics}, indent=1))
    return 0
