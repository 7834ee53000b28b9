"""Original BAIR TFRecords: exact round trips, camera choice, the validate/train rule, bad files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from helpers import bair_samples
from tfrecord.writer import TFRecordWriter

from cvae.data import tfrecords
from cvae.data.errors import DataError

# helpers


def random_batch(n: int, t: int, seed: int) -> dict[str, np.ndarray]:
    """Random arrays for write_file: two distinct cameras, actions and positions."""
    rng = np.random.default_rng(seed)
    return {
        "frames": rng.integers(0, 256, (n, t, 64, 64, 3), dtype=np.uint8),
        "aux_frames": rng.integers(0, 256, (n, t, 64, 64, 3), dtype=np.uint8),
        "actions": rng.standard_normal((n, t, 4)).astype(np.float32),
        "positions": rng.standard_normal((n, t, 3)).astype(np.float32),
    }


def read_all(files: list[Path], **kwargs) -> tuple[np.ndarray, np.ndarray]:
    """Every sequence of the files, stacked."""
    frames, cond = zip(*tfrecords.iter_sequences(files, **kwargs))
    return np.stack(frames), np.stack(cond)


def cond_of(batch: dict[str, np.ndarray]) -> np.ndarray:
    """The (N, T, 7) condition a reader should return for a written batch."""
    return np.concatenate([batch["actions"], batch["positions"]], axis=-1)


def assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    """The error message is a single line that names the offending path."""
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message


def example(t: int, drop: str | None = None, image: bytes = bytes(64 * 64 * 3)) -> dict:
    """A hand-built record datum in the original schema, optionally missing one key."""
    datum = {}
    for i in range(t):
        datum[f"{i}/image_aux1/encoded"] = (image, "byte")
        datum[f"{i}/image_main/encoded"] = (image, "byte")
        datum[f"{i}/action"] = ([0.0] * 4, "float")
        datum[f"{i}/endeffector_pos"] = ([0.0] * 3, "float")
    datum.pop(drop, None)
    return datum


def write_raw(path: Path, *data: dict) -> None:
    """Write hand-built records with the tfrecord package directly."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = TFRecordWriter(str(path))
    for datum in data:
        writer.write(datum)
    writer.close()


@pytest.fixture
def dataset(tmp_path: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """softmotion30_44k/ with three small train files and one test file (4 frames each), named as in the download."""
    base = tmp_path / "softmotion30_44k"
    # traj_2560 sorts before traj_256 and traj_512 as text; the reader must order them as numbers
    layout = {
        "train/traj_256_to_511.tfrecords": random_batch(2, 4, seed=1),
        "train/traj_512_to_767.tfrecords": random_batch(3, 4, seed=2),
        "train/traj_2560_to_2815.tfrecords": random_batch(1, 4, seed=3),
        "test/traj_0_to_255.tfrecords": random_batch(2, 4, seed=4),
    }
    for name, batch in layout.items():
        tfrecords.write_file(base / name, **batch)
    return tmp_path, layout


# round trips


def test_round_trip_full_length_default_camera(tmp_path: Path) -> None:
    batch = random_batch(2, 30, seed=0)
    path = tmp_path / "softmotion30_44k/test/traj_0_to_255.tfrecords"
    tfrecords.write_file(path, **batch)
    files = tfrecords.list_files(tmp_path, "test")
    assert files == [path]
    frames, cond = read_all(files)
    assert frames.dtype == np.uint8 and frames.shape == (2, 30, 64, 64, 3)
    assert cond.dtype == np.float32 and cond.shape == (2, 30, 7)
    np.testing.assert_array_equal(frames, batch["aux_frames"])  # aux1 is the course's camera
    np.testing.assert_array_equal(cond.view(np.uint32), cond_of(batch).view(np.uint32))
    main, _ = read_all(files, camera="image_main")
    np.testing.assert_array_equal(main, batch["frames"])


def test_without_aux_frames_both_cameras_hold_frames(tmp_path: Path) -> None:
    batch = random_batch(1, 3, seed=5)
    del batch["aux_frames"]
    path = tmp_path / "traj_0_to_255.tfrecords"
    tfrecords.write_file(path, **batch)
    for camera in tfrecords.CAMERAS:
        np.testing.assert_array_equal(read_all([path], seq_len=3, camera=camera)[0], batch["frames"])


def test_shorter_seq_len_reads_a_prefix(dataset) -> None:
    root, layout = dataset
    batch = layout["test/traj_0_to_255.tfrecords"]
    frames, cond = read_all(tfrecords.list_files(root, "test"), seq_len=2)
    np.testing.assert_array_equal(frames, batch["aux_frames"][:, :2])
    np.testing.assert_array_equal(cond, cond_of(batch)[:, :2])


def test_bair_schema_samples_round_trip(tmp_path: Path) -> None:
    for name, aux, main, actions, positions in bair_samples():  # generated always, the real one when present
        path = tmp_path / name / "softmotion30_44k/test/traj_0_to_255.tfrecords"
        tfrecords.write_file(path, main[None], actions[None], positions[None], aux_frames=aux[None])
        ((frames, cond),) = tfrecords.iter_sequences(tfrecords.list_files(tmp_path / name, "test"))
        np.testing.assert_array_equal(frames, aux, err_msg=name)
        np.testing.assert_array_equal(cond, np.concatenate([actions, positions], axis=1), err_msg=name)
        ((frames, _),) = tfrecords.iter_sequences([path], camera="image_main")
        np.testing.assert_array_equal(frames, main, err_msg=name)


# splits and counting


def test_split_rule_and_numeric_order(dataset) -> None:
    root, layout = dataset
    base = root / "softmotion30_44k"
    assert tfrecords.list_files(root, "validate") == [base / "train/traj_256_to_511.tfrecords"]
    assert tfrecords.list_files(root, "train") == [
        base / "train/traj_512_to_767.tfrecords",
        base / "train/traj_2560_to_2815.tfrecords",
    ]
    assert tfrecords.list_files(root, "test") == [base / "test/traj_0_to_255.tfrecords"]
    for split in tfrecords.SPLITS:  # root may also be softmotion30_44k/ itself
        assert tfrecords.list_files(base, split) == tfrecords.list_files(root, split)
    frames, _ = read_all(tfrecords.list_files(root, "train"), seq_len=4)
    expected = [layout["train/traj_512_to_767.tfrecords"], layout["train/traj_2560_to_2815.tfrecords"]]
    np.testing.assert_array_equal(frames, np.concatenate([b["aux_frames"] for b in expected]))


def test_validate_file_can_be_named(dataset) -> None:
    root, _ = dataset
    base = root / "softmotion30_44k/train"
    for name in ("traj_2560_to_2815", "traj_2560_to_2815.tfrecords"):
        assert tfrecords.list_files(root, "validate", validate=name) == [base / "traj_2560_to_2815.tfrecords"]
    assert tfrecords.list_files(root, "train", validate="traj_2560_to_2815") == [
        base / "traj_256_to_511.tfrecords",
        base / "traj_512_to_767.tfrecords",
    ]
    with pytest.raises(DataError, match="no file traj_9_to_9") as exc:
        tfrecords.list_files(root, "train", validate="traj_9_to_9")
    assert_one_line_naming(exc, base)


def test_count_sequences(dataset) -> None:
    root, _ = dataset
    assert tfrecords.count_sequences(tfrecords.list_files(root, "validate")) == 2
    assert tfrecords.count_sequences(tfrecords.list_files(root, "train")) == 4
    assert tfrecords.count_sequences(tfrecords.list_files(root, "test")) == 2
    assert tfrecords.count_sequences([]) == 0


def test_single_train_file_serves_train_but_not_validate(tmp_path: Path) -> None:
    path = tmp_path / "softmotion30_44k/train/traj_0_to_255.tfrecords"
    tfrecords.write_file(path, **random_batch(1, 2, seed=6))
    assert tfrecords.list_files(tmp_path, "train") == [path]
    with pytest.raises(DataError, match="at least two train files") as exc:
        tfrecords.list_files(tmp_path, "validate")
    assert_one_line_naming(exc, path.parent)


def test_temp_and_foreign_files_are_ignored(dataset) -> None:
    root, _ = dataset
    test_dir = root / "softmotion30_44k/test"
    (test_dir / ".traj_256_to_511.tfrecords.123-abc.tmp").write_bytes(b"half written")
    (test_dir / "README").write_text("notes")
    assert [p.name for p in tfrecords.list_files(root, "test")] == ["traj_0_to_255.tfrecords"]


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="split"):
        tfrecords.list_files(".", "val")
    with pytest.raises(ValueError, match="camera"):
        next(tfrecords.iter_sequences([], camera="image_aux2"))


# bad inputs: one-line DataError naming the path


def test_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as exc:
        tfrecords.list_files(root, "train")
    assert_one_line_naming(exc, root)


def test_root_without_dataset(tmp_path: Path) -> None:
    (tmp_path / "something_else").mkdir()
    with pytest.raises(DataError, match="softmotion30_44k") as exc:
        tfrecords.list_files(tmp_path, "test")
    assert_one_line_naming(exc, tmp_path)


def test_missing_split_dir_and_no_files(tmp_path: Path) -> None:
    base = tmp_path / "softmotion30_44k"
    (base / "train").mkdir(parents=True)
    with pytest.raises(DataError, match="missing") as exc:
        tfrecords.list_files(tmp_path, "test")
    assert_one_line_naming(exc, base / "test")
    with pytest.raises(DataError, match="no traj") as exc:
        tfrecords.list_files(tmp_path, "train")
    assert_one_line_naming(exc, base / "train")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "traj_0_to_255.tfrecords"
    with pytest.raises(DataError) as exc:
        next(tfrecords.iter_sequences([path]))
    assert_one_line_naming(exc, path)
    with pytest.raises(DataError) as exc:
        tfrecords.count_sequences([path])
    assert_one_line_naming(exc, path)


@pytest.mark.parametrize("key", ["2/image_aux1/encoded", "0/action", "3/endeffector_pos"])
def test_record_missing_a_key(tmp_path: Path, key: str) -> None:
    path = tmp_path / "traj_0_to_255.tfrecords"
    write_raw(path, example(4), example(4, drop=key))
    sequences = tfrecords.iter_sequences([path], seq_len=4)
    next(sequences)  # the first record is whole
    with pytest.raises(DataError, match=f"record 1 lacks key '{key}'") as exc:
        next(sequences)
    assert_one_line_naming(exc, path)


def test_seq_len_longer_than_stored(tmp_path: Path) -> None:
    path = tmp_path / "traj_0_to_255.tfrecords"
    write_raw(path, example(4))
    with pytest.raises(DataError, match="'4/image_aux1/encoded'") as exc:
        next(tfrecords.iter_sequences([path], seq_len=5))
    assert_one_line_naming(exc, path)


def test_image_bytes_of_wrong_length(tmp_path: Path) -> None:
    path = tmp_path / "traj_0_to_255.tfrecords"
    write_raw(path, example(2, image=b"\x89PNG" + bytes(100)))  # e.g. an encoded image
    with pytest.raises(DataError, match="104 bytes, expected one raw 64x64x3 image of 12288") as exc:
        next(tfrecords.iter_sequences([path], seq_len=2))
    assert_one_line_naming(exc, path)


def test_wrong_feature_type(tmp_path: Path) -> None:
    path = tmp_path / "traj_0_to_255.tfrecords"
    datum = example(1)
    datum["0/action"] = ([1, 2, 3, 4], "int")
    write_raw(path, datum)
    with pytest.raises(DataError, match="'0/action' holds int64_list, expected float_list") as exc:
        next(tfrecords.iter_sequences([path], seq_len=1))
    assert_one_line_naming(exc, path)


def test_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "traj_0_to_255.tfrecords"
    write_raw(path, example(1), example(1))
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated") as exc:
        list(tfrecords.iter_sequences([path], seq_len=1))
    assert_one_line_naming(exc, path)
    with pytest.raises(DataError, match="truncated after record 1") as exc:
        tfrecords.count_sequences([path])
    assert_one_line_naming(exc, path)


def test_write_rejects_bad_arrays(tmp_path: Path) -> None:
    batch = random_batch(1, 2, seed=7)
    path = tmp_path / "traj_0_to_255.tfrecords"
    with pytest.raises(ValueError, match="actions"):
        tfrecords.write_file(path, batch["frames"], batch["actions"][..., :3], batch["positions"])
    with pytest.raises(ValueError, match="aux_frames"):
        tfrecords.write_file(path, **{**batch, "aux_frames": batch["aux_frames"][:, :1]})
    assert list(tmp_path.iterdir()) == []


def test_corrupt_payload_is_one_damaged_record_the_next_still_reads(tmp_path: Path) -> None:
    path = tmp_path / "traj_0_to_255.tfrecords"
    write_raw(path, example(1), example(1), example(1))
    data = bytearray(path.read_bytes())
    record_size = len(data) // 3
    data[record_size + 100] ^= 0x01  # one bit of record 1's payload
    path.write_bytes(bytes(data))
    items = list(tfrecords.read_file(path, seq_len=1))
    assert [r for r, _ in items] == [0, 1, 2]
    assert isinstance(items[1][1], DataError) and "record 1 is corrupt" in str(items[1][1])
    assert not isinstance(items[2][1], DataError)
    with pytest.raises(DataError, match="record 1 is corrupt") as exc:
        list(tfrecords.iter_sequences([path], seq_len=1))
    assert_one_line_naming(exc, path)


def test_corrupt_length_is_caught_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "traj_0_to_255.tfrecords"
    write_raw(path, example(1))
    data = bytearray(path.read_bytes())
    data[7] = 0x7F  # the length now claims about 9 exabytes
    path.write_bytes(bytes(data))
    with pytest.raises(DataError, match="corrupt at record 0") as exc:
        list(tfrecords.iter_sequences([path], seq_len=1))
    assert_one_line_naming(exc, path)


def test_non_finite_values_are_damage(tmp_path: Path) -> None:
    path = tmp_path / "traj_0_to_255.tfrecords"
    datum = example(2)
    datum["1/endeffector_pos"] = ([0.0, float("inf"), 0.0], "float")
    write_raw(path, datum)
    with pytest.raises(DataError, match="record 0 frame 1 has a non-finite") as exc:
        list(tfrecords.iter_sequences([path], seq_len=2))
    assert_one_line_naming(exc, path)
