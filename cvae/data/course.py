"""The course's processed BAIR layout: one folder of PNG frames and two CSV files per sequence.

    <root>/{train,validate,test}/traj_<a>_to_<b>.tfrecords/<k>/
        0.png .. 29.png              64x64 RGB frames
        actions.csv                  30 rows x 4, comma-separated, no header
        endeffector_positions.csv    30 rows x 3, comma-separated, no header

The folder names keep the `.tfrecords` suffix of the files they were unpacked from; `traj_<a>_to_<b>`
holds sequences a..b (b = a + per_file - 1) and `<k>` is the index inside that file, from 0.
A sequence's condition is float32 (T, 7): the 4 action values, then the 3 end-effector positions.
Reading takes the first seq_len frames and CSV rows; a sequence with fewer is an error, extras are
ignored (so seq_len=12 reads the course's evaluation window).
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from cvae.data.errors import DataError

SPLITS = ("train", "validate", "test")
IMAGE_SIZE = 64
ACTIONS_CSV = "actions.csv"
POSITIONS_CSV = "endeffector_positions.csv"

_TRAJ_DIR = re.compile(r"^traj_(\d+)_to_(\d+)\.tfrecords$")
# '%.9g' prints any float32 with enough digits to parse back to the identical value
_CSV_FMT = "%.9g"


# helpers


def _error(problem: str) -> DataError:
    """A DataError whose message is a single line, whatever the underlying text holds."""
    # only line breaks are folded: other whitespace may be part of a path
    return DataError("course data: " + re.sub(r"\s*[\r\n]+\s*", " ", problem).strip())


def _check_split(split: str) -> None:
    """Reject split names outside SPLITS (a caller bug, not a data problem)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def _traj_name(a: int, per_file: int) -> str:
    """Folder name of the file that starts at sequence a."""
    return f"traj_{a}_to_{a + per_file - 1}.tfrecords"


def _to_rgb(image: np.ndarray, path: Path) -> np.ndarray:
    """Coerce a decoded PNG (gray, gray+alpha, RGB, RGBA; 1/8/16 bit) to uint8 (H, W, 3)."""
    if image.dtype == np.bool_:
        image = image.astype(np.uint8) * 255
    elif image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise _error(f"{path} has pixel type {image.dtype}, expected 8-bit")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 2, 3, 4):
        raise _error(f"{path} has image shape {image.shape}, expected 64x64 RGB")
    channels = image.shape[2]
    if channels in (1, 2):  # gray (+ alpha): replicate the gray channel, drop alpha
        image = np.repeat(image[:, :, :1], 3, axis=2)
    elif channels == 4:  # RGBA: drop alpha, as PIL's convert("RGB") does
        image = image[:, :, :3]
    if image.shape[:2] != (IMAGE_SIZE, IMAGE_SIZE):
        h, w = image.shape[:2]
        raise _error(f"{path} is {w}x{h} pixels, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return np.ascontiguousarray(image)


def _read_frame(path: Path, seq_len: int) -> np.ndarray:
    """One PNG -> uint8 (64, 64, 3)."""
    if not path.is_file():
        raise _error(f"{path} is missing (a sequence needs frames 0..{seq_len - 1}.png)")
    try:
        image = iio.imread(path, plugin="pillow")  # PNG only: skip probing other formats
    except Exception as exc:  # imageio raises many types for a broken file
        raise _error(f"{path} cannot be read as an image: {exc}") from exc
    return _to_rgb(np.asarray(image), path)


def _read_csv(path: Path, seq_len: int, columns: int) -> np.ndarray:
    """The first seq_len rows of a headerless comma-separated table with `columns` columns."""
    if not path.is_file():
        raise _error(f"{path} is missing")
    try:
        with warnings.catch_warnings():  # an empty file warns; its row count is reported below
            warnings.simplefilter("ignore")
            table = np.loadtxt(path, delimiter=",", dtype=np.float64, ndmin=2)
    except ValueError as exc:
        raise _error(f"{path} is not a comma-separated table of numbers: {exc}") from exc
    rows, cols = table.shape
    if cols != columns and rows > 0:
        raise _error(f"{path} has {cols} columns, expected {columns}")
    if rows < seq_len:
        raise _error(f"{path} has {rows} rows, expected {seq_len}")
    table = table[:seq_len].astype(np.float32)
    if not np.isfinite(table).all():
        raise _error(f"{path} holds non-finite values (nan or inf)")
    return table


def _sorted_numeric_dirs(folder: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """Sub-folders whose name matches pattern, keyed and sorted by the first number in it."""
    found = []
    with os.scandir(folder) as entries:  # scandir's cached file type spares a stat per entry
        for entry in entries:
            match = pattern.match(entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), folder / entry.name))
    return sorted(found, key=lambda pair: pair[0])


def _write_sequence(folder: Path, frames: np.ndarray, cond: np.ndarray) -> None:
    """Write one sequence folder's files (frames (T,64,64,3) uint8, cond (T,7) float32)."""
    for t, frame in enumerate(frames):
        iio.imwrite(folder / f"{t}.png", frame, extension=".png")
    np.savetxt(folder / ACTIONS_CSV, cond[:, :4], fmt=_CSV_FMT, delimiter=",")
    np.savetxt(folder / POSITIONS_CSV, cond[:, 4:], fmt=_CSV_FMT, delimiter=",")


def _replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished temp folder to dest, replacing an older dest without a half-written moment."""
    if not dest.exists():
        os.rename(tmp, dest)
        return
    # rename() cannot replace a non-empty folder: park the old one first, then drop it
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rename(dest, old / dest.name)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


# public API


def list_sequences(root: str | Path, split: str) -> list[Path]:
    """Sequence folders <root>/<split>/traj_<a>_to_<b>.tfrecords/<k>/, sorted by (a, k) numerically."""
    _check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise _error(f"{root} does not exist or is not a folder")
    split_dir = root / split
    if not split_dir.is_dir():
        raise _error(f"{split_dir} is missing (expected folders {', '.join(SPLITS)} under {root})")
    sequences = [
        seq
        for _, traj in _sorted_numeric_dirs(split_dir, _TRAJ_DIR)
        for _, seq in _sorted_numeric_dirs(traj, re.compile(r"^(\d+)$"))
    ]
    if not sequences:
        raise _error(f"{split_dir} holds no sequence folders traj_<a>_to_<b>.tfrecords/<k>/")
    return sequences


def read_sequence(path: Path, seq_len: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """One sequence folder -> (frames uint8 (seq_len,64,64,3), cond float32 (seq_len,7))."""
    path = Path(path)
    if not path.is_dir():
        raise _error(f"{path} is not a sequence folder (it does not exist)")
    frames = np.stack([_read_frame(path / f"{t}.png", seq_len) for t in range(seq_len)])
    actions = _read_csv(path / ACTIONS_CSV, seq_len, 4)
    positions = _read_csv(path / POSITIONS_CSV, seq_len, 3)
    return frames, np.concatenate([actions, positions], axis=1)


def write_split(
    root: str | Path,
    split: str,
    frames: np.ndarray,
    cond: np.ndarray,
    start: int = 0,
    per_file: int = 256,
) -> None:
    """Write (N,T,64,64,3) uint8 frames and (N,T,7) cond in the course layout.

    Sequence i lands in traj_<a>_to_<b>.tfrecords/<k>/ ({0..T-1}.png, actions.csv,
    endeffector_positions.csv) with a = start + (i // per_file) * per_file and k = i % per_file.
    Each folder is written to a temp sibling and renamed into place; an existing one is replaced.
    """
    _check_split(split)
    frames = np.asarray(frames)
    cond = np.asarray(cond)
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[2:] != (IMAGE_SIZE, IMAGE_SIZE, 3):
        raise ValueError(f"frames must be uint8 (N, T, 64, 64, 3), got {frames.dtype} {frames.shape}")
    if cond.shape != (*frames.shape[:2], 7):
        raise ValueError(f"cond must be (N, T, 7) = {(*frames.shape[:2], 7)}, got {cond.shape}")
    if per_file < 1 or start < 0:
        raise ValueError(f"need per_file >= 1 and start >= 0, got per_file={per_file}, start={start}")
    cond = cond.astype(np.float32)
    split_dir = Path(root) / split
    for i in range(len(frames)):
        # files start at `start` and hold per_file sequences each; k restarts at 0 in every file
        traj_dir = split_dir / _traj_name(start + (i // per_file) * per_file, per_file)
        traj_dir.mkdir(parents=True, exist_ok=True)
        k = i % per_file
        # a dot-prefixed temp sibling never matches the <k> pattern, so readers skip it;
        # os.mkdir (unlike mkdtemp's 0700) leaves the final folder's permissions to the umask
        tmp = traj_dir / f".{k}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp"
        tmp.mkdir()
        try:
            _write_sequence(tmp, frames[i], cond[i])
            _replace_dir(tmp, traj_dir / str(k))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
