"""`cvae` command line: train, schedules, data preview/export.

Every user mistake ends as one line on stderr and exit code 2; nothing is written before the
config and data have been checked.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
from pathlib import Path
from typing import Callable

from cvae import config as config_mod
from cvae.config import Config, ConfigError
from cvae.data.errors import DataError

# helpers


def split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """First positional without '=' is the experiment; the rest are section.key=value overrides."""
    exp = None
    if args and "=" not in args[0]:
        exp, args = args[0], args[1:]
    for a in args:
        if "=" not in a:
            raise ConfigError(f"unexpected argument {a!r}: expected section.key=value")
    return exp, args


def load_config(args: list[str]) -> Config:
    """Experiment file + overrides -> validated Config."""
    exp, overrides = split_args(args)
    return config_mod.load(config_mod.find_experiment(exp), overrides)


def _on_sigterm(signum: int, frame: object) -> None:
    raise SystemExit(128 + signum)  # unwinds like Ctrl-C so runs are closed as KILLED


# commands


def cmd_train(ns: argparse.Namespace) -> int:
    if ns.resume:
        if ns.args:
            raise ConfigError("--resume continues a run with its saved config; drop the other arguments")
        run_dir = Path(ns.resume)
        if not (run_dir / "last.pt").is_file():
            raise ConfigError(f"--resume: {run_dir}/last.pt not found")
    else:
        cfg = load_config(ns.args)  # before torch is imported: a mistake is reported at once
    from cvae.tracking import make_tracker
    from cvae.trainer import load_checkpoint, train

    if ns.resume:
        cfg = config_mod.from_dict(load_checkpoint(run_dir / "last.pt")["config"])
        result = train(cfg, run_dir=run_dir, resume=True, tracker=make_tracker(cfg))
    else:
        result = train(cfg, tracker=make_tracker(cfg))
    print(result.summary())
    return 0


def cmd_schedules(ns: argparse.Namespace) -> int:
    import numpy as np

    from cvae.plots import schedule_plot
    from cvae.schedules import kl_beta, teacher_forcing_ratio

    cfg = load_config(ns.args)
    t = cfg.train
    its = np.unique(np.linspace(0, cfg.total_iters - 1, min(cfg.total_iters, 2000)).astype(int))
    beta = [kl_beta(int(i), cfg.total_iters, cfg.kl) for i in its]
    epochs = list(range(1, t.niter + 1))
    tfr = [teacher_forcing_ratio(ep, cfg.tf, t.niter) for ep in epochs]
    out = Path(ns.out) if ns.out else Path(cfg.run.out_dir) / cfg.run.name / "schedules.png"
    title = f"{cfg.run.name}: KL {cfg.kl.mode} (cycles {cfg.kl.cycles}, ratio {cfg.kl.ratio}), " \
            f"TF decay from epoch {cfg.tf.start_decay_epoch}"
    schedule_plot(its / t.epoch_size, beta, epochs, tfr, out, title)
    print(f"wrote {out}  (epochs {t.niter} x {t.epoch_size} iterations; "
          f"tfr {tfr[0]:.2f} -> {tfr[-1]:.2f}; beta max {max(beta):.3g})")
    return 0


def cmd_data_preview(ns: argparse.Namespace) -> int:
    import numpy as np

    from cvae.data import load_split, to_tensors
    from cvae.video import save_strip, sequences_gif

    cfg = load_config(ns.args)
    split = load_split(cfg.data, ns.split)
    n = min(ns.n, len(split))
    x, c = to_tensors(split, np.arange(n), cfg.data.seq_len)
    out = Path(ns.out) if ns.out else Path(cfg.run.out_dir) / "preview"
    gif = sequences_gif(out / f"{cfg.data.name}_{ns.split}.gif", list(x), ncols=min(4, n))
    strip = save_strip(out / f"{cfg.data.name}_{ns.split}_strip.png", list(x[: min(n, 4)]))
    print(f"wrote {gif} and {strip} ({n} sequences of {cfg.data.name}/{ns.split}, "
          f"{len(split)} in the split; cond[0] of sequence 0: {np.round(c[0, 0].numpy(), 3).tolist()})")
    return 0


def cmd_data_export(ns: argparse.Namespace) -> int:
    import numpy as np

    from cvae.data import SPLITS, course, load_split

    cfg = load_config(ns.args)
    out = Path(ns.out)
    if out.exists() and any(out.iterdir()) and not ns.force:
        raise ConfigError(f"--out {out} is not empty (use --force to write into it)")
    for split in SPLITS:
        data = load_split(cfg.data, split)
        start = {"train": 512, "validate": 256, "test": 0}[split]  # the course's traj numbering
        course.write_split(out, split, np.asarray(data.frames), data.cond, start=start)
        print(f"{split}: {len(data)} sequences -> {out / split}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cvae` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("sweep", "worker"):
        from sweeps.run import main as sweep_main

        return sweep_main(argv)
    if argv and argv[0] == "report":
        from reports.build import main as report_main

        return report_main(argv[1:])
    parser = argparse.ArgumentParser(prog="cvae", description="SVG-style conditional VAE for robot-pushing video.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("sweep", help="Optuna study over training settings: cvae sweep [STUDY] [--workers N] [--trials N]")
    sub.add_parser("worker", help="join a running study as one more worker: cvae worker STUDY --storage URL")
    sub.add_parser("report", help="comparison report of a study: cvae report [STUDY]")

    p = sub.add_parser("train", help="train one model: cvae train [EXPERIMENT] [section.key=value ...]")
    p.add_argument("args", nargs="*", help="experiment (name or YAML path) then section.key=value overrides")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("schedules", help="plot KL weight and teacher-forcing ratio before training")
    p.add_argument("args", nargs="*")
    p.add_argument("--out", help="PNG path (default runs/<name>/schedules.png)")
    p.set_defaults(fn=cmd_schedules)

    data = sub.add_parser("data", help="dataset tools").add_subparsers(dest="data_command", required=True)
    p = data.add_parser("preview", help="GIF and frame strip of a few sequences")
    p.add_argument("args", nargs="*")
    p.add_argument("--split", default="train", choices=["train", "validate", "test"])
    p.add_argument("-n", type=int, default=8, help="sequences to show")
    p.add_argument("--out", help="folder (default runs/preview)")
    p.set_defaults(fn=cmd_data_preview)
    p = data.add_parser("export", help="write the dataset in the course's PNG+CSV layout")
    p.add_argument("args", nargs="*")
    p.add_argument("--out", required=True, help="root folder to write train/ validate/ test/ into")
    p.add_argument("--force", action="store_true", help="write into a non-empty folder")
    p.set_defaults(fn=cmd_data_export)

    ns = parser.parse_args(argv)
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # start/stop chatter per run
    signal.signal(signal.SIGTERM, _on_sigterm)
    fn: Callable[[argparse.Namespace], int] = ns.fn
    try:
        return fn(ns)
    except (ConfigError, DataError) as exc:
        print(f"cvae: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("cvae: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - Diverged and friends: one line, the run folder keeps last.pt
        from cvae.trainer import Diverged

        if isinstance(exc, Diverged):
            kept = f"last good checkpoint: {exc.last_checkpoint}" if exc.last_checkpoint else "no epoch completed"
            print(f"cvae: {exc} ({kept})", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
