"""The original BAIR robot-pushing TFRecords (softmotion30_44k), read and written without TensorFlow.

    softmotion30_44k/{train,test}/traj_<n>_to_<n+255>.tfrecords

Each record is one tf.train.Example holding one sequence; per frame i:
'{i}/image_aux1/encoded' and '{i}/image_main/encoded' are raw uint8 RGB bytes (64*64*3, not PNG),
'{i}/action' is 4 floats and '{i}/endeffector_pos' is 3 floats. The course uses the aux1 camera.

Splits: the original has only train and test, so ours are carved out of it as the course did:
  validate = the lowest-numbered train file (train/traj_256_to_511.tfrecords in the download, 256
             sequences; `validate=` names another one),
  train    = the remaining train files (with a single train file, train uses it and validate fails),
  test     = every file of the test folder (test/traj_0_to_255.tfrecords, 256 sequences).

`iter_records` and `decode` hold the rules, for the loader, `cvae data convert` and `cvae data check`
alike: the file's framing and checksums are intact (a corrupt length is caught before anything is
allocated); a record is a tf.train.Example with, for every frame 0..seq_len-1, each camera asked for
as one raw 64*64*3-byte string, 4 action floats and 3 end-effector floats, all finite. Other keys
(and frames past seq_len) are ignored, so the keys' order does not matter.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf.message import DecodeError
from tfrecord import example_pb2
from tfrecord.writer import TFRecordWriter

from cvae.atomic import atomic_path
from cvae.data.errors import DamagedData, DataError

SPLITS = ("train", "validate", "test")
CAMERAS = ("image_aux1", "image_main")
DATASET_DIR = "softmotion30_44k"
IMAGE_SHAPE = (64, 64, 3)
IMAGE_BYTES = 64 * 64 * 3

_FILE = re.compile(r"^traj_(\d+)_to_(\d+)\.tfrecords$")
# a TFRecord frame: uint64 length, uint32 masked crc32c of the length, payload, masked crc32c of it
_HEADER = struct.Struct("<Q")
_CRC_BYTES = 4
# the tfrecord package's reader checks no checksum and trusts the length (a flipped bit can ask for
# exabytes), so records are framed here; its writer's masked_crc is TensorFlow's checksum
_masked_crc = TFRecordWriter.masked_crc

Decoded = tuple[dict[str, np.ndarray], np.ndarray]  # ({camera: frames}, cond)


# helpers


def _one_line(problem: str) -> str:
    """The message with line breaks folded (other whitespace may be part of a path)."""
    return "bair tfrecords: " + re.sub(r"\s*[\r\n]+\s*", " ", problem).strip()


def _error(problem: str) -> DataError:
    """A usage problem (no such folder, no such validate file)."""
    return DataError(_one_line(problem))


def _damaged(problem: str) -> DamagedData:
    """A damaged item: a record, a file, an empty split folder."""
    return DamagedData(_one_line(problem))


def _dataset_dir(root: Path) -> Path:
    """softmotion30_44k/ itself, given it or the folder holding it."""
    if (root / DATASET_DIR).is_dir():
        return root / DATASET_DIR
    if root.is_dir() and ((root / "train").is_dir() or (root / "test").is_dir()):
        return root
    if not root.is_dir():
        raise _error(f"{root} does not exist or is not a folder")
    raise _error(f"{root} holds neither {DATASET_DIR}/ nor train/ and test/ folders")


def _split_files(folder: Path) -> list[Path]:
    """traj_<n>_to_<m>.tfrecords files of one folder, sorted by n."""
    if not folder.is_dir():
        raise _damaged(f"{folder} is missing")
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _FILE.match(p.name)) and p.is_file()]
    if not found:
        raise _damaged(f"{folder} is an empty split: it holds no traj_<n>_to_<m>.tfrecords files")
    return [p for _, p in sorted(found, key=lambda pair: pair[0])]


def _feature(features: Any, key: str, kind: str, path: Path, record: int, seq_len: int) -> Any:
    """The value list of one feature, checked for presence and type."""
    if key not in features:
        needs = f"seq_len={seq_len} needs frames 0..{seq_len - 1}"
        raise _damaged(f"{path} record {record} lacks key '{key}' ({needs})")
    feature = features[key]
    found = feature.WhichOneof("kind")
    if found != kind:
        raise _damaged(f"{path} record {record} key '{key}' holds {found}, expected {kind}")
    return getattr(feature, kind).value


def _check_camera(camera: str) -> None:
    """Reject camera names outside CAMERAS (a caller bug)."""
    if camera not in CAMERAS:
        raise ValueError(f"unknown camera {camera!r}; expected one of {', '.join(CAMERAS)}")


def _read_exact(stream: Any, size: int, path: Path, record: int) -> bytes:
    """`size` bytes from the stream, or the damage of a file that ends early."""
    data = stream.read(size)
    if len(data) != size:
        raise _damaged(f"{path} is truncated in record {record} (the file ends {size - len(data)} bytes early)")
    return data


def _check_batch(name: str, array: np.ndarray, shape: tuple[int, ...]) -> None:
    """Reject an argument whose shape differs from the expected one (a caller bug)."""
    if array.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {array.shape}")


# public API


def list_files(root: str | Path, split: str, validate: str | None = None) -> list[Path]:
    """TFRecord files of a split, sorted numerically; root holds softmotion30_44k/ or is it.

    validate: the train file carved out as the validate split (default: the lowest-numbered one).
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    base = _dataset_dir(Path(root))
    if split == "test":
        return _split_files(base / "test")
    train = _split_files(base / "train")
    if validate is not None:
        chosen = [p for p in train if p.name in (validate, f"{validate}.tfrecords")]
        if not chosen:
            raise _error(f"{base / 'train'} holds no file {validate} to use as the validate split")
        return chosen if split == "validate" else [p for p in train if p != chosen[0]]
    if split == "train":
        return train[1:] if len(train) > 1 else train
    if len(train) < 2:
        raise _damaged(
            f"{base / 'train'} holds only {train[0].name}; validate is the lowest-numbered train file, "
            "so it needs at least two train files (the original has 169)"
        )
    return train[:1]


def is_dataset(root: str | Path) -> bool:
    """Whether root looks like the original download (softmotion30_44k/ or its train/test files)."""
    try:
        base = _dataset_dir(Path(root))
    except DataError:
        return False
    return any(
        _FILE.match(p.name) and p.is_file()
        for sub in ("train", "test")
        if (base / sub).is_dir()
        for p in (base / sub).iterdir()
    )


def iter_records(path: str | Path) -> Iterator[bytes | DamagedData]:
    """Each record's payload, or the damage of one whose data fails its checksum (the next ones are
    still framed); a file whose framing is lost (truncated, corrupt length) raises DamagedData."""
    path = Path(path)
    if not path.is_file():
        raise _damaged(f"{path} does not exist")
    size = path.stat().st_size
    with open(path, "rb") as stream:
        record = 0
        while stream.tell() < size:
            header = _read_exact(stream, _HEADER.size + _CRC_BYTES, path, record)
            if _masked_crc(header[: _HEADER.size]) != header[_HEADER.size :]:
                raise _damaged(f"{path} is corrupt at record {record} (its length field fails its checksum)")
            (length,) = _HEADER.unpack_from(header)
            if length > size - stream.tell():  # checked before reading: nothing huge is allocated
                raise _damaged(
                    f"{path} is truncated in record {record} (it needs {length} bytes, {size - stream.tell()} are left)"
                )
            payload = _read_exact(stream, length, path, record)
            if _masked_crc(payload) != _read_exact(stream, _CRC_BYTES, path, record):
                yield _damaged(f"{path} record {record} is corrupt (its data fails its checksum)")
            else:
                yield payload
            record += 1


def decode(
    payload: bytes, path: Path, record: int, seq_len: int = 30, cameras: Iterable[str] = ("image_aux1",)
) -> Decoded:
    """One serialized Example -> ({camera: frames uint8 (seq_len,64,64,3)}, cond float32 (seq_len,7))."""
    cameras = tuple(cameras)
    for camera in cameras:
        _check_camera(camera)
    example = example_pb2.Example()
    try:
        example.ParseFromString(payload)
    except DecodeError as exc:
        raise _damaged(f"{path} record {record} is not a tf.train.Example: {exc}") from exc
    features = example.features.feature
    frames = {camera: np.empty((seq_len, *IMAGE_SHAPE), np.uint8) for camera in cameras}
    cond = np.empty((seq_len, 7), np.float32)
    for i in range(seq_len):
        for camera in cameras:
            key = f"{i}/{camera}/encoded"
            images = _feature(features, key, "bytes_list", path, record, seq_len)
            if len(images) != 1 or len(images[0]) != IMAGE_BYTES:
                sizes = ", ".join(str(len(b)) for b in images)
                raise _damaged(
                    f"{path} record {record} key '{key}' has {sizes or 'no'} bytes, "
                    f"expected one raw 64x64x3 image of {IMAGE_BYTES}"
                )
            frames[camera][i] = np.frombuffer(images[0], np.uint8).reshape(IMAGE_SHAPE)
        for key, lo, hi in ((f"{i}/action", 0, 4), (f"{i}/endeffector_pos", 4, 7)):
            values = _feature(features, key, "float_list", path, record, seq_len)
            if len(values) != hi - lo:
                raise _damaged(f"{path} record {record} key '{key}' has {len(values)} values, expected {hi - lo}")
            cond[i, lo:hi] = values
    if not np.isfinite(cond).all():
        i = int(np.flatnonzero(~np.isfinite(cond).all(axis=1))[0])
        raise _damaged(f"{path} record {record} frame {i} has a non-finite action or end-effector value")
    return frames, cond


def read_file(
    path: str | Path, seq_len: int = 30, cameras: Iterable[str] = ("image_aux1",)
) -> Iterator[tuple[int, Decoded | DamagedData]]:
    """(record index, decoded sequence or its damage) per record; a broken file ends with its damage.

    Damage is yielded, not raised, so that a caller may skip it (`--skip-bad`) and go on.
    """
    path = Path(path)
    cameras = tuple(cameras)
    record = 0
    try:
        for record, payload in enumerate(iter_records(path)):
            if isinstance(payload, DamagedData):
                yield record, payload
                continue
            try:
                yield record, decode(payload, path, record, seq_len, cameras)
            except DamagedData as exc:
                yield record, exc
    except DamagedData as exc:  # the framing is lost: nothing after this point can be read
        yield record, exc


def iter_sequences(
    files: Iterable[str | Path], seq_len: int = 30, camera: str = "image_aux1"
) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Yield (frames uint8 (seq_len,64,64,3), cond float32 (seq_len,7)) per sequence; damage raises."""
    _check_camera(camera)
    for path in files:
        for _, item in read_file(path, seq_len, (camera,)):
            if isinstance(item, DamagedData):
                raise item
            frames, cond = item
            yield frames[camera], cond


def count_sequences(files: Iterable[str | Path]) -> int:
    """Number of records in the files, found by hopping over record headers (nothing is decoded)."""
    total = 0
    for path in map(Path, files):
        if not path.is_file():
            raise _damaged(f"{path} does not exist")
        size = path.stat().st_size
        with open(path, "rb") as stream:
            while stream.tell() < size:
                header = stream.read(_HEADER.size)
                if len(header) < _HEADER.size:
                    raise _damaged(f"{path} is truncated after record {total}")
                (length,) = _HEADER.unpack(header)
                end = stream.tell() + _CRC_BYTES + length + _CRC_BYTES
                if end > size:
                    raise _damaged(f"{path} is truncated after record {total}")
                stream.seek(end)
                total += 1
    return total


def write_file(
    path: Path,
    frames: np.ndarray,
    actions: np.ndarray,
    positions: np.ndarray,
    aux_frames: np.ndarray | None = None,
) -> None:
    """Write sequences in the original schema (used by tests and fixtures).

    frames (N,T,64,64,3) uint8 go to image_main and aux_frames to image_aux1; without aux_frames
    both cameras hold `frames`. actions (N,T,4), positions (N,T,3). The file appears atomically.
    """
    path = Path(path)
    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 5 or frames.shape[2:] != IMAGE_SHAPE:
        raise ValueError(f"frames must be uint8 (N, T, 64, 64, 3), got {frames.dtype} {frames.shape}")
    n, t = frames.shape[:2]
    aux = frames if aux_frames is None else np.asarray(aux_frames)
    _check_batch("aux_frames", aux, frames.shape)
    if aux.dtype != np.uint8:
        raise ValueError(f"aux_frames must be uint8, got {aux.dtype}")
    actions = np.asarray(actions, np.float32)
    positions = np.asarray(positions, np.float32)
    _check_batch("actions", actions, (n, t, 4))
    _check_batch("positions", positions, (n, t, 3))

    # a dot-prefixed temp sibling never matches traj_*.tfrecords, so readers skip it
    with atomic_path(path) as tmp:
        writer = TFRecordWriter(str(tmp))
        try:
            for s in range(n):
                datum = {}
                for i in range(t):
                    datum[f"{i}/image_aux1/encoded"] = (aux[s, i].tobytes(), "byte")
                    datum[f"{i}/image_main/encoded"] = (frames[s, i].tobytes(), "byte")
                    # tolist() gives Python floats that hold the float32 values exactly
                    datum[f"{i}/action"] = (actions[s, i].tolist(), "float")
                    datum[f"{i}/endeffector_pos"] = (positions[s, i].tolist(), "float")
                writer.write(datum)
        finally:
            writer.close()
