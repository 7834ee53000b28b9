"""Damaged data, one behaviour everywhere: the loader, `cvae data check` and `cvae data convert` name the
file (and record) and the reason in one line; --skip-bad skips and counts; nothing half-written is left."""

from __future__ import annotations

import shutil
import struct
from collections.abc import Callable
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from tfrecord.writer import TFRecordWriter

from cvae.cli import main
from cvae.config import DataCfg
from cvae.data import DamagedData, course, load_split, sample
from cvae.data.convert import MARKER

# validate = traj_256 (1 sequence), train = traj_512 (2 sequences: the damage goes into the second)
LAYOUT = {"train/traj_256_to_511": 1, "train/traj_512_to_767": 2, "test/traj_0_to_255": 1}
TRAIN_FILE = "softmotion30_44k/train/traj_512_to_767.tfrecords"
SEQ = "train/traj_512_to_767.tfrecords/1"  # the damaged course sequence
Damage = Callable[[Path], tuple[str, Path, str]]  # root -> (split, path named, words of the reason)


# helpers


def record_payloads(data: dict[str, np.ndarray], drop: str | None = None, short: str | None = None) -> list[bytes]:
    """Serialized Examples of sample data, optionally missing key `drop` or with key `short` cut short."""
    payloads = []
    for s in range(len(data["aux1"])):
        datum = {}
        for i in range(data["aux1"].shape[1]):
            datum[f"{i}/image_aux1/encoded"] = (data["aux1"][s, i].tobytes(), "byte")
            datum[f"{i}/image_main/encoded"] = (data["main"][s, i].tobytes(), "byte")
            datum[f"{i}/action"] = (data["action"][s, i].tolist(), "float")
            datum[f"{i}/endeffector_pos"] = (data["position"][s, i].tolist(), "float")
        if s == 1 and drop:
            del datum[drop]
        if s == 1 and short:
            datum[short] = (datum[short][0][:12000], "byte")
        payloads.append(TFRecordWriter.serialize_tf_example(datum))
    return payloads


def frame(payload: bytes) -> bytes:
    """One TFRecord frame: length, its checksum, payload, its checksum."""
    length = struct.pack("<Q", len(payload))
    return length + TFRecordWriter.masked_crc(length) + payload + TFRecordWriter.masked_crc(payload)


def rewrite_train_file(root: Path, **kwargs) -> Path:
    """traj_512's two records written again, the second one damaged as kwargs say."""
    path = root / TRAIN_FILE
    data = sample.sequences(2, start=1)
    path.write_bytes(b"".join(frame(p) for p in record_payloads(data, **kwargs)))
    return path


def first_record_size(path: Path) -> int:
    """Bytes taken by the file's first record frame."""
    (length,) = struct.unpack("<Q", path.read_bytes()[:8])
    return 8 + 4 + length + 4


# damage to a course tree (all in train/traj_512_to_767.tfrecords/1 unless said)


def missing_frame(root: Path):
    (root / SEQ / "17.png").unlink()
    return "train", root / SEQ / "17.png", "is missing"


def extra_frame(root: Path):
    shutil.copy(root / SEQ / "0.png", root / SEQ / "30.png")
    return "train", root / SEQ / "30.png", "extra frame"


def unreadable_png(root: Path):
    (root / SEQ / "5.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    return "train", root / SEQ / "5.png", "cannot be read as a PNG"


def wrong_size_png(root: Path):
    iio.imwrite(root / SEQ / "5.png", np.zeros((32, 48, 3), np.uint8))
    return "train", root / SEQ / "5.png", "48x32 pixels, expected 64x64"


def grey_png(root: Path):
    iio.imwrite(root / SEQ / "5.png", np.zeros((64, 64), np.uint8))
    return "train", root / SEQ / "5.png", "grey image, expected 8-bit RGB"


def rgba_png(root: Path):
    iio.imwrite(root / SEQ / "5.png", np.zeros((64, 64, 4), np.uint8))
    return "train", root / SEQ / "5.png", "RGBA image"


def edit_csv(root: Path, name: str, edit: Callable[[list[str]], list[str]]) -> Path:
    path = root / SEQ / name
    path.write_text("\n".join(edit(path.read_text().splitlines())) + "\n")
    return path


def csv_rows(root: Path):
    return "train", edit_csv(root, "actions.csv", lambda lines: lines[:29]), "29 rows, expected 30"


def csv_columns(root: Path):
    path = edit_csv(root, "endeffector_positions.csv", lambda lines: [",".join(x.split(",")[:2]) for x in lines])
    return "train", path, "line 1 has 2 columns, expected 3"


def csv_header(root: Path):
    return "train", edit_csv(root, "actions.csv", lambda lines: ["a,b,c,d"] + lines), "line 1 is a header"


def csv_not_numbers(root: Path):
    return (
        "train",
        edit_csv(root, "actions.csv", lambda lines: lines[:4] + ["1,2,x,4"] + lines[5:]),
        "line 5 holds 'x', not a number",
    )


def csv_not_finite(root: Path):
    path = edit_csv(root, "endeffector_positions.csv", lambda lines: lines[:2] + ["0.5,nan,1"] + lines[3:])
    return "train", path, "line 3 holds a non-finite value"


def course_empty_split(root: Path):
    for seq in course.sequence_folders(root / "validate/traj_256_to_511.tfrecords"):
        shutil.rmtree(seq)
    return "validate", root / "validate", "empty split"


# damage to the original TFRecords (record 1 of train/traj_512_to_767 unless said)


def truncated(root: Path):
    path = root / TRAIN_FILE
    path.write_bytes(path.read_bytes()[:-100])
    return "train", path, "is truncated in record 1"


def corrupt_data(root: Path):
    path = root / TRAIN_FILE
    data = bytearray(path.read_bytes())
    data[first_record_size(path) + 12 + 5000] ^= 0xFF  # a pixel byte of record 1
    path.write_bytes(bytes(data))
    return "train", path, "record 1 is corrupt (its data fails its checksum)"


def corrupt_length(root: Path):
    path = root / TRAIN_FILE
    data = bytearray(path.read_bytes())
    data[first_record_size(path) + 5] ^= 0x40  # would claim ~70 TB if trusted
    path.write_bytes(bytes(data))
    return "train", path, "corrupt at record 1 (its length field fails its checksum)"


def missing_key(root: Path):
    return "train", rewrite_train_file(root, drop="7/action"), "record 1 lacks key '7/action'"


def wrong_frame_bytes(root: Path):
    path = rewrite_train_file(root, short="3/image_aux1/encoded")
    return "train", path, "record 1 key '3/image_aux1/encoded' has 12000 bytes, expected one raw 64x64x3 image of 12288"


def not_an_example(root: Path):
    path = root / TRAIN_FILE
    first = path.read_bytes()[: first_record_size(path)]
    path.write_bytes(first + frame(b"\xff" * 64))
    return "train", path, "record 1 is not a tf.train.Example"


def tfrecord_empty_split(root: Path):
    (root / "softmotion30_44k/test/traj_0_to_255.tfrecords").unlink()
    return "test", root / "softmotion30_44k/test", "empty split"


COURSE = [
    missing_frame,
    extra_frame,
    unreadable_png,
    wrong_size_png,
    grey_png,
    rgba_png,
    csv_rows,
    csv_columns,
    csv_header,
    csv_not_numbers,
    csv_not_finite,
    course_empty_split,
]
TFRECORD = [
    truncated,
    corrupt_data,
    corrupt_length,
    missing_key,
    wrong_frame_bytes,
    not_an_example,
    tfrecord_empty_split,
]
CASES = [pytest.param(("bair", d), id=d.__name__) for d in COURSE] + [
    pytest.param(("tfrecord", d), id=d.__name__) for d in TFRECORD
]


# fixtures


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """An intact TFRecord source and the course tree converted from it."""
    base = tmp_path_factory.mktemp("pristine")
    sample.write_dataset(base / "tfrecord", LAYOUT)
    assert main(["data", "convert", str(base / "tfrecord"), str(base / "bair"), "--workers", "1"]) == 0
    (base / "bair" / MARKER).unlink()  # a plain course tree, as users have it
    return {"tfrecord": base / "tfrecord", "bair": base / "bair"}


@pytest.fixture
def damaged(request, pristine: dict[str, Path], tmp_path: Path) -> tuple[str, Path, str, Path, str]:
    """(kind, root, split, path named, reason words) of a fresh copy with the case's damage."""
    kind, damage = request.param
    root = tmp_path / kind
    shutil.copytree(pristine[kind], root)
    split, path, words = damage(root)
    return kind, root, split, path, words


def assert_one_line(message: str, path: Path, words: str) -> None:
    """A single line naming the path and giving the reason."""
    assert message.count("\n") <= 1 and message.strip(), message
    assert str(path) in message and words in message, message


def hidden_leftovers(folder: Path) -> list[Path]:
    return [p for p in folder.rglob(".*") if p.name != MARKER] if folder.exists() else []


# the loader, check and convert on each damage


@pytest.mark.parametrize("damaged", CASES, indirect=True)
def test_loader(damaged, tmp_path: Path) -> None:
    kind, root, split, path, words = damaged
    cache_dir = tmp_path / "cache"
    with pytest.raises(DamagedData) as exc:
        load_split(DataCfg(name=kind, root=str(root), cache_dir=str(cache_dir)), split)
    assert_one_line(str(exc.value), path, words)
    assert not cache_dir.exists() or list(cache_dir.iterdir()) == []  # no cache, no temp folder


@pytest.mark.parametrize("damaged", CASES, indirect=True)
def test_check(damaged, capsys) -> None:
    kind, root, split, path, words = damaged
    assert main(["data", "check", str(root), "--workers", "1"]) == 1
    out = capsys.readouterr().out
    (bad,) = [line for line in out.splitlines() if line.startswith("bad: ")]
    assert_one_line(bad, path, words)
    assert "1 damaged item(s)" in out and "sequences/s" in out
    good = {"train": 2, "validate": 1, "test": 1}
    good[split] = 0 if "empty" in words else good[split] - 1
    for name, n in good.items():
        assert f"  {name}: {n} sequences" in out


@pytest.mark.parametrize("damaged", CASES, indirect=True)
def test_convert(damaged, tmp_path: Path, capsys) -> None:
    kind, root, split, path, words = damaged
    dest = tmp_path / "out"
    to = "course" if kind == "tfrecord" else "cache"
    assert main(["data", "convert", str(root), str(dest), "--to", to, "--workers", "1"]) == 1
    err = capsys.readouterr().err
    assert_one_line(err, path, words)
    assert hidden_leftovers(dest) == []
    if to == "course":  # the damaged file's folder never appears
        assert not (dest / "train/traj_512_to_767.tfrecords").exists()
    else:
        assert not any(split in p.name for p in dest.iterdir() if p.is_dir())


@pytest.mark.parametrize("damaged", CASES, indirect=True)
def test_convert_skip_bad(damaged, tmp_path: Path, capsys) -> None:
    kind, root, split, path, words = damaged
    dest = tmp_path / "out"
    to = "course" if kind == "tfrecord" else "cache"
    assert main(["data", "convert", str(root), str(dest), "--to", to, "--skip-bad", "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "skipped 1 damaged item(s):" in out
    (listed,) = [line for line in out.splitlines() if line.startswith("  ")]
    assert_one_line(listed, path, words)
    assert hidden_leftovers(dest) == []
    if "empty" in words:
        return
    if to == "course":  # record 0 kept as sequence 0; record 1 skipped (a gap, not a shift)
        assert [p.name for p in course.list_sequences(dest, "train")] == ["0"]
    else:
        cached = load_split(DataCfg(name=kind, root=str(root), cache_dir=str(dest)), "train")
        np.testing.assert_array_equal(np.asarray(cached.frames), sample.sequences(1, start=1)["aux1"])
