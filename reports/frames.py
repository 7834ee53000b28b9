"""The runs frame (reports/collect.py) as the study's own functions read it, and numbers made JSON-ready."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from sweeps.design import Run


def num(v: Any) -> Any:
    """JSON-ready: numpy scalars to Python, NaN/inf to None."""
    if isinstance(v, (np.floating, float)):
        return None if not math.isfinite(float(v)) else float(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (list, tuple)):
        return [num(x) for x in v]
    if isinstance(v, dict):
        return {k: num(x) for k, x in v.items()}
    return v


def as_runs(runs: pd.DataFrame) -> list[Run]:
    """The frame's rows as sweeps.design Runs, so the report ranks and decides with the study's own functions."""
    params = [c for c in runs.columns if c.startswith("param:")]
    return [
        Run(
            number=int(r["trial"]),
            state=r["state"],
            config_id=r["config_id"],
            seed_index=None if pd.isna(r["seed_index"]) else int(r["seed_index"]),
            phase=r["phase"],
            value=None if pd.isna(r["value"]) else float(r["value"]),
            params={p.removeprefix("param:"): r[p] for p in params if not pd.isna(r[p])},
            outcome=r["outcome"],
        )
        for r in runs.to_dict("records")
    ]
