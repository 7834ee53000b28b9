"""Which code trained a run: a fingerprint of the trainer's and the sweep's source files.

The coordinator records its fingerprint on the study; a worker whose own differs (a node with another
checkout) refuses to take trials, so one study never mixes two versions of the model or the schedules.
"""

from __future__ import annotations

import hashlib
import importlib
from functools import lru_cache
from pathlib import Path

PACKAGES = ("cvae", "sweeps")  # what decides a run's numbers; reports/ only reads them


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """12 hex digits over the path and bytes of every .py file of PACKAGES, as this process imports them."""
    h = hashlib.sha1()
    for pkg in PACKAGES:
        folder = Path(importlib.import_module(pkg).__file__ or "").resolve().parent  # wherever Ray unpacked it
        for path in sorted(folder.rglob("*.py")):
            h.update(f"{pkg}/{path.relative_to(folder)}".encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:12]


def code_mismatch(study_code: str | None, study: str) -> str | None:
    """The one-line refusal of a worker whose code is not the study's, or None when they agree (or the study
    predates fingerprints)."""
    mine = code_fingerprint()
    if study_code is None or study_code == mine:
        return None
    return (
        f"this worker's code (fingerprint {mine}) is not the code study {study} runs with ({study_code}): "
        "run the coordinator's checkout here, or start the sweep with --ray, which ships its code to every node"
    )
