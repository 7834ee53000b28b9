"""The trainer's command line: train, eval, schedules, data preview/export/convert/check/bench.

The `cvae` command itself is reports/cli.py, on top of every floor: it hands these commands to `main` here and
the study's (sweep, worker, register, report) to sweeps.cli and reports.build.

Every user mistake ends as one line on stderr and exit code 2; nothing is written before the
config and data have been checked. `data check/convert/bench` exit 1 for damaged data instead.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Callable, Sequence

from cvae import config as config_mod
from cvae.atomic import WriteError, check_writable
from cvae.config import Config, ConfigError
from cvae.data.errors import DamagedData, DataError
from cvae.experiments import find_experiment

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
    return config_mod.load(find_experiment(exp), overrides)


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
        check_writable(cfg.run.out_dir)  # a read-only folder is one line before any work
    # deferred: MLflow loads only when tracking is on
    from cvae.checkpoints import load_checkpoint
    from cvae.mlflow_tracker import make_tracker
    from cvae.trainer import train

    if ns.resume:
        cfg = config_mod.from_dict(load_checkpoint(run_dir / "last.pt")["config"])
        if not Path(cfg.run.out_dir).is_absolute():
            # relative to where the run started, not to here: the run folder (<out_dir>/<name>/<run>) knows where
            # its MLflow store is, whatever folder the resume is typed in
            cfg = config_mod.build({**cfg.flat(), "run.out_dir": str(run_dir.resolve().parent.parent)})
        result = train(cfg, run_dir=run_dir, resume=True, tracker=make_tracker(cfg))
    else:
        result = train(cfg, tracker=make_tracker(cfg))
    print(result.summary())
    return 0


def cmd_schedules(ns: argparse.Namespace) -> int:
    import numpy as np

    # deferred: torch (and matplotlib) load only for the command that needs them
    from cvae.plots import schedule_plot
    from cvae.schedules import kl_beta, teacher_forcing_ratio

    cfg = load_config(ns.args)
    t = cfg.train
    its = np.unique(np.linspace(0, cfg.total_iters - 1, min(cfg.total_iters, 2000)).astype(int))
    beta = [kl_beta(int(i), cfg.total_iters, cfg.kl) for i in its]
    epochs = list(range(1, t.niter + 1))
    tfr = [teacher_forcing_ratio(ep, cfg.tf, t.niter) for ep in epochs]
    out = Path(ns.out) if ns.out else Path(cfg.run.out_dir) / cfg.run.name / "schedules.png"
    title = (
        f"{cfg.run.name}: KL {cfg.kl.mode} (cycles {cfg.kl.cycles}, ratio {cfg.kl.ratio}), "
        f"TF decay from epoch {cfg.tf.start_decay_epoch}"
    )
    schedule_plot(its / t.epoch_size, beta, epochs, tfr, out, title)
    print(
        f"wrote {out}  (epochs {t.niter} x {t.epoch_size} iterations; "
        f"tfr {tfr[0]:.2f} -> {tfr[-1]:.2f}; beta max {max(beta):.3g})"
    )
    return 0


def cmd_data_preview(ns: argparse.Namespace) -> int:
    import numpy as np

    # deferred: the data readers (imageio, tfrecord) load only for the data commands
    from cvae.data import load_split, to_tensors
    from cvae.video import save_strip, sequences_gif

    cfg = load_config(ns.args)
    split = load_split(cfg.data, ns.split)
    n = min(ns.n, len(split))
    x, c = to_tensors(split, np.arange(n), cfg.data.seq_len)
    out = Path(ns.out) if ns.out else Path(cfg.run.out_dir) / "preview"
    gif = sequences_gif(out / f"{cfg.data.name}_{ns.split}.gif", list(x), ncols=min(4, n))
    strip = save_strip(out / f"{cfg.data.name}_{ns.split}_strip.png", list(x[: min(n, 4)]))
    print(
        f"wrote {gif} and {strip} ({n} sequences of {cfg.data.name}/{ns.split}, "
        f"{len(split)} in the split; cond[0] of sequence 0: {np.round(c[0, 0].numpy(), 3).tolist()})"
    )
    return 0


def cmd_data_export(ns: argparse.Namespace) -> int:
    import numpy as np

    # deferred: the data readers (imageio, tfrecord) load only for the data commands
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


def cmd_eval(ns: argparse.Namespace) -> int:
    # deferred: torch (and matplotlib) load only for the command that needs them
    from cvae import scoring

    plan = scoring.plan(ns.target, split=ns.split, samples=ns.samples, horizon=ns.horizon, overrides=ns.overrides)
    outcome = scoring.run(plan, note=lambda message: print(f"cvae: note: {message}", file=sys.stderr))
    print(outcome.summary())
    if outcome.log_error:
        print(f"cvae: error: {outcome.log_error}", file=sys.stderr)
        return 1
    return 0


def _at_least(low: int) -> Callable[[str], int]:
    """argparse type: an integer >= low."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value

    return parse


def _workers(n: int) -> int:
    """--workers 0 = one per CPU core, at most 8 (PNG coding is the cost; disks saturate past that)."""
    return n if n > 0 else min(8, os.cpu_count() or 1)


def cmd_data_convert(ns: argparse.Namespace) -> int:
    # deferred: the data readers (imageio, tfrecord) load only for the data commands
    from cvae.data import convert, sources

    if ns.to == "cache" and ns.camera != "aux1":
        raise DataError("--to cache: training reads the aux1 camera; convert --to course for the main camera")
    if ns.to == "cache" and ns.validate:
        raise DataError("--validate applies to --to course; the cache keeps the loader's own split rule")
    try:
        if ns.to == "course":
            report = convert.to_course(
                ns.src,
                ns.dest,
                camera=ns.camera,
                validate=ns.validate,
                skip_bad=ns.skip_bad,
                workers=_workers(ns.workers),
            )
        else:
            report = convert.to_cache(ns.src, ns.dest, skip_bad=ns.skip_bad)
    except DamagedData as exc:
        print(f"cvae: error: {exc} (--skip-bad skips damaged items; finished files are kept)", file=sys.stderr)
        return 1
    for split in dict.fromkeys([*report.written, *report.kept]):
        n, kept = report.written.get(split, 0), report.kept.get(split, 0)
        print(f"{split}: {n} sequences written" + (f", {kept} kept from an earlier run" if kept else ""))
    if report.bad:
        print(f"skipped {len(report.bad)} damaged item(s):")
        for message in report.bad:
            print(f"  {message}")
    total = sum(report.written.values())
    print(f"done in {report.seconds:.1f} s ({total / max(report.seconds, 1e-9):.0f} sequences/s) -> {report.dest}")
    if ns.to == "course":
        print(f"train with: cvae train lab data.root={report.dest}")
    else:
        kind = sources.detect(ns.src)
        print(f"train with: cvae train lab data.name={kind} data.root={ns.src} data.cache_dir={report.dest}")
    return 0


def cmd_data_check(ns: argparse.Namespace) -> int:
    from tqdm import tqdm

    # deferred: the data readers (imageio, tfrecord) load only for the data commands
    from cvae.data import check, sources

    report = check.check(
        ns.root, seq_len=ns.seq_len, workers=_workers(ns.workers), on_bad=lambda message: tqdm.write(f"bad: {message}")
    )
    print(f"{ns.root}: {sources.KIND_NAMES[report.kind]}")
    for split, n in report.sequences.items():
        bad = report.bad_per_split[split]
        print(f"  {split}: {n} sequences" + (f", {bad} damaged" if bad else ""))
    verdict = f"{len(report.bad)} damaged item(s)" if report.bad else "all intact"
    print(f"{verdict}; {report.per_second:.0f} sequences/s ({report.seconds:.1f} s, {report.workers} worker(s))")
    return 0 if report.ok else 1


def cmd_data_bench(ns: argparse.Namespace) -> int:
    # deferred: the data readers (imageio, tfrecord) load only for the data commands
    from cvae.data import speed

    if ns.frames > 30:
        raise DataError(f"--frames {ns.frames}: BAIR sequences have 30 frames")
    try:
        r = speed.measure(
            ns.root, split=ns.split, sequences=ns.n, batch_size=ns.batch_size, n_frames=ns.frames, threads=ns.threads
        )
    except DamagedData as exc:
        print(f"cvae: error: {exc} (run `cvae data check {ns.root}`)", file=sys.stderr)
        return 1
    print(f"{r['root']} ({r['source']}), split {r['split']}: {r['sequences']} sequences of {r['seq_len']} frames")
    print(f"loader: batch {r['batch_size']} x {r['n_frames']} frames, {r['threads']} torch thread(s); {r['loader']}")
    print(f"source files: {r['source_seq_per_s']:.0f} sequences/s")
    print(f"cache:        {r['cache_seq_per_s']:.0f} sequences/s ({r['cache_note']})")
    return 0


def main(argv: list[str] | None = None, above: Sequence[tuple[str, str]] = ()) -> int:
    """The trainer's commands (train, eval, schedules, data ...). `above`: (name, help) of the commands the
    floors above add (sweep, report, ...), listed in the help; reports/cli.py runs those itself."""
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="cvae", description="SVG-style conditional VAE for robot-pushing video.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, text in above:
        sub.add_parser(name, help=text)

    p = sub.add_parser("train", help="train one model: cvae train [EXPERIMENT] [section.key=value ...]")
    p.add_argument("args", nargs="*", help="experiment (name or YAML path) then section.key=value overrides")
    p.add_argument("--resume", metavar="RUN_DIR", help="continue the run in RUN_DIR from its last.pt")
    p.set_defaults(fn=cmd_train)

    p = sub.add_parser("eval", help="the course's score of a checkpoint on a whole split: cvae eval RUN_DIR|CHECKPOINT")
    p.add_argument("target", metavar="RUN_DIR|CHECKPOINT", help="a run folder (its best.pt) or a checkpoint file")
    p.add_argument(
        "overrides", nargs="*", default=[], help="section.key=value of run/data/eval/tracking (e.g. data.root=...)"
    )
    # checked by the command, not argparse: a bad value is one line, like every other mistake
    p.add_argument("--split", default="test", help="train, validate or test (default test)")
    p.add_argument("--samples", metavar="N", help="also score the best of N samples per sequence by SSIM (SVG)")
    p.add_argument(
        "--horizon",
        metavar="N",
        help="frames to predict (default the checkpoint's eval.n_future, e.g. 28 for SVG's protocol)",
    )
    p.set_defaults(fn=cmd_eval)

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
    p = data.add_parser("convert", help="original TFRecords -> course PNG+CSV tree, or a source -> the cache")
    p.add_argument("src", help="softmotion30_44k/ (or the folder holding it); a course tree too with --to cache")
    p.add_argument("dest", help="new or empty folder, or the DEST of an earlier run to resume")
    p.add_argument(
        "--to",
        choices=["course", "cache"],
        default="course",
        help="course: PNG+CSV tree; cache: memory-mapped arrays for data.cache_dir=DEST",
    )
    p.add_argument("--camera", choices=["aux1", "main"], default="aux1", help="aux1 is the course's view")
    p.add_argument(
        "--validate",
        metavar="FILE",
        help="train file that becomes the validate split (default: the lowest-numbered, traj_256_to_511)",
    )
    p.add_argument("--skip-bad", action="store_true", help="skip damaged records/files and list them")
    p.add_argument(
        "--workers",
        type=_at_least(0),
        default=0,
        metavar="N",
        help="processes for --to course (0 = one per core, max 8)",
    )
    p.set_defaults(fn=cmd_data_convert)
    p = data.add_parser("check", help="read every file and record of a course tree or TFRecord folder")
    p.add_argument("root")
    p.add_argument("--seq-len", type=_at_least(1), default=30, help="frames every sequence must have")
    p.add_argument("--workers", type=_at_least(0), default=0, metavar="N", help="processes (0 = one per core, max 8)")
    p.set_defaults(fn=cmd_data_check)
    p = data.add_parser("bench", help="sequences/s from the source files and from the cache")
    p.add_argument("root")
    p.add_argument("--split", default="train", choices=["train", "validate", "test"])
    p.add_argument("-n", type=_at_least(1), default=256, help="sequences to read")
    p.add_argument("--batch-size", type=_at_least(1), default=12)
    p.add_argument(
        "--frames", type=_at_least(1), default=12, help="frames per batch sequence (n_past + n_future, <= 30)"
    )
    p.add_argument("--threads", type=_at_least(1), default=1, help="torch threads while batching")
    p.set_defaults(fn=cmd_data_bench)

    ns, extra = parser.parse_known_args(argv)
    # section.key=value anywhere, also after an option (`cvae data preview demo -n 4 data.seed=3`)
    overrides = [x for x in extra if ("=" in x and not x.startswith("-")) or ns.command == "eval"]  # eval names
    rest = [x for x in extra if x not in overrides]  # a misspelt option in one line of its own
    target = "overrides" if hasattr(ns, "overrides") else "args" if hasattr(ns, "args") else None
    if rest or (overrides and target is None):
        parser.error(f"unrecognized arguments: {' '.join(rest or overrides)}")
    if overrides:
        setattr(ns, target, [*getattr(ns, target), *overrides])
    logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)  # start/stop chatter per run
    signal.signal(signal.SIGTERM, _on_sigterm)
    fn: Callable[[argparse.Namespace], int] = ns.fn
    try:
        return fn(ns)
    except (ConfigError, DataError) as exc:
        print(f"cvae: error: {exc}", file=sys.stderr)
        return 2
    except WriteError as exc:  # full disk, unwritable folder: the earlier files are intact
        print(f"cvae: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("cvae: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - Diverged and friends: one line, the run folder keeps last.pt
        # deferred: torch (and matplotlib) load only for the command that needs them
        from cvae.trainer import Diverged

        if isinstance(exc, Diverged):
            kept = f"last good checkpoint: {exc.last_checkpoint}" if exc.last_checkpoint else "no epoch completed"
            print(f"cvae: {exc} ({kept})", file=sys.stderr)
            return 1
        raise


if __name__ == "__main__":
    sys.exit(main())
