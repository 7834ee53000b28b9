"""`cvae`: the one command line, on top of every floor.

train, eval, schedules, data ... go to the trainer (cvae.cli); sweep, worker, register and `sweep repair` to the
study (sweeps.cli); report to the report (reports.build). Nothing below imports this module.
"""

from __future__ import annotations

import sys

from cvae import cli as trainer_cli

ABOVE = (
    ("sweep", "Optuna study over training settings: cvae sweep [STUDY] [--workers N] [--trials N]"),
    ("worker", "join a running study as one more worker: cvae worker STUDY --storage URL"),
    ("sweep repair", "close MLflow runs whose trial is no longer alive: cvae sweep repair STUDY"),
    ("report", "comparison report of a study: cvae report [STUDY]"),
    ("register", "the study's winner into MLflow's Model Registry as cvae-<study>: cvae register STUDY"),
)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `cvae` console script."""
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] in ("sweep", "worker", "register"):
        from sweeps import cli as study_cli  # deferred: Optuna and MLflow cost `cvae train` a second to import

        if argv[0] == "sweep" and argv[1:2] == ["repair"]:  # `cvae sweep repair STUDY`
            return study_cli.main(["repair", *argv[2:]])
        return study_cli.main(argv)
    if argv and argv[0] == "report":
        from reports import build  # deferred: pandas and matplotlib, as above

        return build.main(argv[1:])
    return trainer_cli.main(argv, above=ABOVE)


if __name__ == "__main__":
    sys.exit(main())
