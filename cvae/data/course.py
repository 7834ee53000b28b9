"""The course's processed BAIR layout: one folder of PNG frames and two CSV files per sequence.

    <root>/{train,validate,test}/traj_<a>_to_<b>.tfrecords/<k>/
        0.png .. 29.png              64x64 8-bit RGB frames
        actions.csv                  30 rows x 4, comma-separated, no header
        endeffector_positions.csv    30 rows x 3, comma-separated, no header

The folder names keep the `.tfrecords` suffix of the files they were unpacked from; `traj_<a>_to_<b>`
holds sequences a..b (b = a + per_file - 1) and `<k>` is the index inside that file, from 0.
A sequence's condition is float32 (T, 7): the 4 action values, then the 3 end-effector positions.

`read_sequence` holds the rules, for the loader, `cvae data convert` and `cvae data check` alike: frames
are numbered 0..T-1 without gaps, both CSV files have T rows (one per frame) of finite numbers, every
frame read is a 64x64 8-bit RGB PNG (grey, RGBA and palette images are refused, not converted).
Reading takes the first seq_len frames (T may be longer: seq_len=12 reads the course's evaluation
window). Names starting with a dot (temp folders, .DS_Store) are ignored everywhere.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image  # imageio's own PNG backend; direct use decodes 1.8x faster than iio.imread

from cvae.data.errors import DamagedData, DataError

SPLITS = ("train", "validate", "test")
IMAGE_SIZE = 64
ACTIONS_CSV = "actions.csv"
POSITIONS_CSV = "endeffector_positions.csv"
# zlib level 1 writes twice as fast as the default 6 for 5% larger files; decoding is as fast
PNG_COMPRESS_LEVEL = 1

_TRAJ_DIR = re.compile(r"^traj_(\d+)_to_(\d+)\.tfrecords$")
_SEQ_DIR = re.compile(r"^(\d+)$")
_FRAME = re.compile(r"^(0|[1-9]\d*)\.png$")
# '%.9g' prints any float32 with enough digits to parse back to the identical value
_CSV_FMT = "%.9g"
_MODES = {
    "L": "a grey image",
    "1": "a 1-bit image",
    "I": "a 32-bit grey image",
    "I;16": "a 16-bit grey image",
    "LA": "a grey image with alpha",
    "RGBA": "an RGBA image (with alpha)",
    "P": "a palette image",
    "PA": "a palette image with alpha",
    "CMYK": "a CMYK image",
}


# helpers


def _one_line(problem: str) -> str:
    """The message with line breaks folded (other whitespace may be part of a path)."""
    return "course data: " + re.sub(r"\s*[\r\n]+\s*", " ", problem).strip()


def _error(problem: str) -> DataError:
    """A usage problem (no such root folder)."""
    return DataError(_one_line(problem))


def _damaged(problem: str) -> DamagedData:
    """A damaged item: a sequence, a file in it, a split folder."""
    return DamagedData(_one_line(problem))


def _check_split(split: str) -> None:
    """Reject split names outside SPLITS (a caller bug, not a data problem)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")


def _traj_name(a: int, per_file: int) -> str:
    """Folder name of the file that starts at sequence a."""
    return f"traj_{a}_to_{a + per_file - 1}.tfrecords"


def _read_frame(path: Path) -> np.ndarray:
    """One PNG -> uint8 (64, 64, 3); anything but a 64x64 8-bit RGB PNG is damage."""
    try:
        with Image.open(path, formats=["PNG"]) as image:
            image.load()  # decode now, so a truncated file fails here
            mode, size = image.mode, image.size
            pixels = np.asarray(image) if mode == "RGB" else None
    except FileNotFoundError:
        raise _damaged(f"{path} is missing") from None
    except Exception as exc:  # PIL raises many types for a broken file
        detail = str(exc).replace(f" '{path}'", "")  # PIL repeats the path
        raise _damaged(f"{path} cannot be read as a PNG image: {detail}") from exc
    if pixels is None:
        kind = _MODES.get(mode, f"a mode {mode} image")
        raise _damaged(f"{path} is {kind}, expected 8-bit RGB")
    if size != (IMAGE_SIZE, IMAGE_SIZE):
        raise _damaged(f"{path} is {size[0]}x{size[1]} pixels, expected {IMAGE_SIZE}x{IMAGE_SIZE}")
    return pixels


def _read_csv(path: Path, columns: int) -> np.ndarray:
    """A headerless comma-separated table of finite numbers with `columns` columns -> float32 (rows, columns)."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise _damaged(f"{path} is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise _damaged(f"{path} cannot be read as text: {exc}") from exc
    rows: list[list[float]] = []
    numbers: list[int] = []  # line number of each row, for messages
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue  # blank lines (a trailing one, say) carry no row, as for numpy.loadtxt
        cells = line.split(",")
        try:
            row = [float(cell) for cell in cells]
        except ValueError:
            if not rows:
                raise _damaged(
                    f"{path} line {number} is a header or not numbers ({line.strip()[:40]!r}); "
                    "the course's CSV files have no header"
                ) from None
            bad = next(c for c in cells if not _is_number(c))
            raise _damaged(f"{path} line {number} holds {bad.strip()[:20]!r}, not a number") from None
        if len(row) != columns:
            raise _damaged(f"{path} line {number} has {len(row)} columns, expected {columns}")
        rows.append(row)
        numbers.append(number)
    table = np.array(rows, np.float64).reshape(-1, columns).astype(np.float32)
    if not np.isfinite(table).all():
        row = int(np.flatnonzero(~np.isfinite(table).all(axis=1))[0])
        raise _damaged(f"{path} line {numbers[row]} holds a non-finite value (nan, inf or beyond float32)")
    return table


def _is_number(cell: str) -> bool:
    """Whether float() accepts the cell."""
    try:
        float(cell)
    except ValueError:
        return False
    return True


def _frame_files(path: Path) -> dict[int, str]:
    """{index: name} of the frame files of a sequence folder; an oddly named PNG is damage."""
    frames: dict[int, str] = {}
    try:
        with os.scandir(path) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                match = _FRAME.match(name)
                if match:
                    frames[int(match.group(1))] = name
                elif name.lower().endswith(".png"):
                    raise _damaged(f"{path / name} is an extra frame (frames are named 0.png, 1.png, ...)")
    except (FileNotFoundError, NotADirectoryError):
        raise _damaged(f"{path} is not a sequence folder (it does not exist)") from None
    return frames


def _sequence_length(path: Path, frames: dict[int, str], rows: dict[str, int]) -> int:
    """T, the number of frames, once frame files and CSV rows agree; else the damage, named."""
    count = max(frames) + 1 if frames else 0
    gap = next((i for i in range(count) if i not in frames), None)
    if gap is not None:
        raise _damaged(f"{path / f'{gap}.png'} is missing (the folder has frames up to {count - 1}.png)")
    actions, positions = rows[ACTIONS_CSV], rows[POSITIONS_CSV]
    if actions == positions != count:
        if actions < count:
            raise _damaged(
                f"{path / f'{actions}.png'} is an extra frame: {ACTIONS_CSV} and {POSITIONS_CSV} "
                f"have {actions} rows (one per frame)"
            )
        raise _damaged(
            f"{path / f'{count}.png'} is missing: {ACTIONS_CSV} and {POSITIONS_CSV} have {actions} rows (one per frame)"
        )
    for name, found in rows.items():
        if found != count:
            raise _damaged(f"{path / name} has {found} rows, expected {count} (one per frame)")
    return count


def _sorted_numeric_dirs(folder: Path, pattern: re.Pattern[str]) -> list[tuple[int, Path]]:
    """Sub-folders whose name matches pattern, keyed and sorted by the first number in it."""
    found = []
    with os.scandir(folder) as entries:  # scandir's cached file type spares a stat per entry
        for entry in entries:
            match = pattern.match(entry.name)
            if match and entry.is_dir():
                found.append((int(match.group(1)), folder / entry.name))
    return sorted(found, key=lambda pair: pair[0])


# public API


def traj_folders(root: str | Path, split: str) -> list[Path]:
    """<root>/<split>/traj_<a>_to_<b>.tfrecords/ folders sorted by a; a missing split folder is damage."""
    _check_split(split)
    root = Path(root)
    if not root.is_dir():
        raise _error(f"{root} does not exist or is not a folder")
    split_dir = root / split
    if not split_dir.is_dir():
        raise _damaged(f"{split_dir} is missing (expected folders {', '.join(SPLITS)} under {root})")
    return [traj for _, traj in _sorted_numeric_dirs(split_dir, _TRAJ_DIR)]


def sequence_folders(traj: Path) -> list[Path]:
    """The <k>/ sequence folders of one traj folder, sorted by k numerically."""
    return [seq for _, seq in _sorted_numeric_dirs(traj, _SEQ_DIR)]


def list_sequences(root: str | Path, split: str) -> list[Path]:
    """Sequence folders <root>/<split>/traj_<a>_to_<b>.tfrecords/<k>/, sorted by (a, k) numerically."""
    sequences = [seq for traj in traj_folders(root, split) for seq in sequence_folders(traj)]
    if not sequences:
        raise _damaged(f"{Path(root) / split} is an empty split: no sequence folders traj_<a>_to_<b>.tfrecords/<k>/")
    return sequences


def read_sequence(path: Path, seq_len: int = 30) -> tuple[np.ndarray, np.ndarray]:
    """One sequence folder -> (frames uint8 (seq_len,64,64,3), cond float32 (seq_len,7)), validated."""
    path = Path(path)
    frames = _frame_files(path)
    tables = {name: _read_csv(path / name, cols) for name, cols in ((ACTIONS_CSV, 4), (POSITIONS_CSV, 3))}
    count = _sequence_length(path, frames, {name: len(t) for name, t in tables.items()})
    if count < seq_len:
        raise _damaged(f"{path / f'{count}.png'} is missing (a sequence needs frames 0..{seq_len - 1}.png)")
    pixels = np.stack([_read_frame(path / f"{t}.png") for t in range(seq_len)])
    cond = np.concatenate([tables[ACTIONS_CSV][:seq_len], tables[POSITIONS_CSV][:seq_len]], axis=1)
    return pixels, cond


def write_sequence(folder: Path, frames: np.ndarray, cond: np.ndarray) -> None:
    """Write one sequence folder's files (frames (T,64,64,3) uint8, cond (T,7) float32) into `folder`."""
    for t, frame in enumerate(frames):
        iio.imwrite(folder / f"{t}.png", frame, extension=".png", compress_level=PNG_COMPRESS_LEVEL)
    np.savetxt(folder / ACTIONS_CSV, cond[:, :4], fmt=_CSV_FMT, delimiter=",")
    np.savetxt(folder / POSITIONS_CSV, cond[:, 4:], fmt=_CSV_FMT, delimiter=",")


def replace_dir(tmp: Path, dest: Path) -> None:
    """Move a finished temp folder to dest, replacing an older dest without a half-written moment."""
    if not dest.exists():
        os.rename(tmp, dest)
        return
    # rename() cannot replace a non-empty folder: park the old one first, then drop it
    old = Path(tempfile.mkdtemp(prefix=f".{dest.name}.old-", dir=dest.parent))
    os.rename(dest, old / dest.name)
    os.rename(tmp, dest)
    shutil.rmtree(old, ignore_errors=True)


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
            write_sequence(tmp, frames[i], cond[i])
            replace_dir(tmp, traj_dir / str(k))
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
