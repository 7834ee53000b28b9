"""Small data sets in the exact BAIR TFRecord schema with real pixels, for tests and demos.

The pixels and actions come from one real sequence (../shared/data/bair_sample, from thuml/iVideoGPT,
MIT licence) where it is there, else from the built-in generator (see load); it has no end-effector positions,
so a stand-in is made up: the running sum of the action's first three values plus a per-sequence offset.
Sequence i is that sequence rolled by i frames in time (and mirrored when i is odd), so every sequence differs
while every pixel stays real.
"""

from __future__ import annotations

import random
import struct
from pathlib import Path

import numpy as np
from tfrecord import example_pb2
from tfrecord.writer import TFRecordWriter

from cvae.atomic import atomic_path
from cvae.data import pushing

SAMPLE = Path(__file__).resolve().parents[3] / "shared/data/bair_sample/bair_sample.npz"


def load(path: str | Path = SAMPLE) -> dict[str, np.ndarray]:
    """The real sequence: aux1 and main frames uint8 (30,64,64,3), actions float32 (30,4). Without the file (a
    clone with no ../shared beside it) a stand-in in the same layout: two sequences of the built-in generator
    as the two cameras and the first one's actions, so every test that uses it runs anywhere."""
    if Path(path) == SAMPLE and not SAMPLE.is_file():
        frames, cond = pushing.generate(2, seed=11)
        return {"aux1": frames[0], "main": frames[1], "action": cond[0, :, :4].copy()}
    with np.load(path) as data:
        return {
            "aux1": data["aux1_image"].astype(np.uint8),
            "main": data["image"].astype(np.uint8),
            "action": data["action"].astype(np.float32),
        }


def sequences(n: int, start: int = 0, seq_len: int = 30, path: str | Path = SAMPLE) -> dict[str, np.ndarray]:
    """n distinct sequences: aux1, main (n,seq_len,64,64,3) uint8, action (n,seq_len,4), position (n,seq_len,3)."""
    real = load(path)
    out: dict[str, list[np.ndarray]] = {"aux1": [], "main": [], "action": [], "position": []}
    for i in range(start, start + n):
        mirror = (lambda a: a[:, :, ::-1]) if i % 2 else (lambda a: a)
        out["aux1"].append(mirror(np.roll(real["aux1"], i, axis=0))[:seq_len])
        out["main"].append(mirror(np.roll(real["main"], i, axis=0))[:seq_len])
        action = np.roll(real["action"], i, axis=0)[:seq_len]
        out["action"].append(action)
        out["position"].append((np.cumsum(action[:, :3], axis=0) + np.float32(i) / 8).astype(np.float32))
    return {k: np.ascontiguousarray(np.stack(v)) for k, v in out.items()}


class _Writer(TFRecordWriter):
    """The tfrecord package's writer, given records already serialized (to choose their keys' order)."""

    def write_payload(self, payload: bytes) -> None:
        """Frame one serialized Example as write() does: length, its checksum, payload, its checksum."""
        length = struct.pack("<Q", len(payload))
        for part in (length, self.masked_crc(length), payload, self.masked_crc(payload)):
            self.file.write(part)


def _varint(n: int) -> bytes:
    """Protobuf's base-128 varint."""
    out = bytearray()
    while True:
        out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
        n >>= 7
        if not n:
            return bytes(out)


def _example(entries: list[tuple[str, example_pb2.Feature]]) -> bytes:
    """A serialized tf.train.Example whose feature map entries lie on the wire in the given order.

    (Protobuf itself writes map entries in its hash order, which changes from process to process.)
    """
    features = b"".join(example_pb2.Features(feature={k: f}).SerializeToString() for k, f in entries)
    return b"\x0a" + _varint(len(features)) + features  # Example.features is field 1, length-delimited


def write_file(path: str | Path, data: dict[str, np.ndarray], shuffle_keys: int | None = 0) -> Path:
    """Write sequences() output as one TFRecord file in the original schema (atomically).

    shuffle_keys: seed of a random order of each record's keys on the wire (files need not sort
    them; readers must not care); None for frame order (0/image_aux1, 0/image_main, 0/action, ...).
    """
    path = Path(path)
    rng = random.Random(shuffle_keys)
    with atomic_path(path) as tmp:
        _write_records(tmp, data, rng, shuffle_keys)
    return path


def _write_records(tmp: Path, data: dict[str, np.ndarray], rng: random.Random, shuffle_keys: int | None) -> None:
    """The records of write_tfrecord, into `tmp`."""
    writer = _Writer(str(tmp))
    try:
        for s in range(len(data["aux1"])):
            entries = []
            for i in range(data["aux1"].shape[1]):
                image = {
                    cam: example_pb2.Feature(bytes_list=example_pb2.BytesList(value=[data[cam][s, i].tobytes()]))
                    for cam in ("aux1", "main")
                }
                entries += [
                    (f"{i}/image_aux1/encoded", image["aux1"]),
                    (f"{i}/image_main/encoded", image["main"]),
                    # float32 values go in as they are: FloatList stores float32
                    (
                        f"{i}/action",
                        example_pb2.Feature(float_list=example_pb2.FloatList(value=data["action"][s, i].tolist())),
                    ),
                    (
                        f"{i}/endeffector_pos",
                        example_pb2.Feature(float_list=example_pb2.FloatList(value=data["position"][s, i].tolist())),
                    ),
                ]
            if shuffle_keys is not None:
                rng.shuffle(entries)
            writer.write_payload(_example(entries))
    finally:
        writer.close()


def write_dataset(root: str | Path, layout: dict[str, int], seq_len: int = 30) -> dict[str, dict[str, np.ndarray]]:
    """{'train/traj_256_to_511': 3, ...} -> root/softmotion30_44k/<name>.tfrecords; returns what each holds."""
    written, start = {}, 0
    for name, n in layout.items():
        data = sequences(n, start=start, seq_len=seq_len)
        write_file(Path(root) / "softmotion30_44k" / f"{name}.tfrecords", data, shuffle_keys=start)
        written[name] = data
        start += n
    return written
