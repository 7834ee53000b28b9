"""Course PNG+CSV layout: exact round trips, numeric ordering, atomic writes, one-line errors."""

from __future__ import annotations

from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
from helpers import bair_samples

from cvae.data import course
from cvae.data.errors import DataError

# helpers


def random_batch(n: int, t: int = 30, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 frames and float32 cond spanning many magnitudes (to stress the CSV text)."""
    rng = np.random.default_rng(seed)
    frames = rng.integers(0, 256, (n, t, 64, 64, 3), dtype=np.uint8)
    cond = (rng.standard_normal((n, t, 7)) * 10.0 ** rng.integers(-30, 30, (n, t, 7))).astype(np.float32)
    return frames, cond


def bits(a: np.ndarray) -> np.ndarray:
    """float32 values as their bit patterns, so comparisons are bit-exact (and -0.0 != 0.0)."""
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def assert_one_line_naming(exc: pytest.ExceptionInfo, path: Path) -> None:
    """The error message is a single line that names the offending path."""
    message = str(exc.value)
    assert "\n" not in message
    assert str(path) in message


@pytest.fixture
def written(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """Two sequences written in the course layout under tmp_path/data."""
    frames, cond = random_batch(2)
    root = tmp_path / "data"
    course.write_split(root, "train", frames, cond)
    return root, frames, cond


# round trips


def test_round_trip_exact_across_files(tmp_path: Path) -> None:
    frames, cond = random_batch(3)
    cond[0, 0, :3] = [-0.0, 1e-45, np.finfo(np.float32).max]  # signed zero, subnormal, extreme
    course.write_split(tmp_path, "train", frames, cond, per_file=2)
    seqs = course.list_sequences(tmp_path, "train")
    rel = [str(p.relative_to(tmp_path / "train")) for p in seqs]
    assert rel == ["traj_0_to_1.tfrecords/0", "traj_0_to_1.tfrecords/1", "traj_2_to_3.tfrecords/0"]
    for i, seq in enumerate(seqs):
        got_frames, got_cond = course.read_sequence(seq)
        assert got_frames.dtype == np.uint8 and got_frames.shape == (30, 64, 64, 3)
        assert got_cond.dtype == np.float32 and got_cond.shape == (30, 7)
        np.testing.assert_array_equal(got_frames, frames[i])
        np.testing.assert_array_equal(bits(got_cond), bits(cond[i]))


def test_csv_files_match_the_course_format(written: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, cond = written
    seq = root / "train/traj_0_to_255.tfrecords/1"
    assert sorted(p.name for p in seq.iterdir()) == sorted(
        [f"{t}.png" for t in range(30)] + ["actions.csv", "endeffector_positions.csv"]
    )
    lines = (seq / "actions.csv").read_text().splitlines()
    assert len(lines) == 30 and all(len(line.split(",")) == 4 for line in lines)
    positions = np.loadtxt(seq / "endeffector_positions.csv", delimiter=",")
    np.testing.assert_array_equal(bits(positions.astype(np.float32)), bits(cond[1, :, 4:]))


def test_sorting_is_numeric(tmp_path: Path) -> None:
    # frame value = sequence number, so the order can be checked from the pixels read back
    frames = np.broadcast_to(np.arange(12, dtype=np.uint8)[:, None, None, None, None], (12, 1, 64, 64, 3))
    cond = np.zeros((12, 1, 7), np.float32)
    course.write_split(tmp_path, "train", frames, cond)  # k = 0..11 in one file: 10 after 2
    train = course.list_sequences(tmp_path, "train")
    assert [int(p.name) for p in train] == list(range(12))
    assert [course.read_sequence(p, seq_len=1)[0][0, 0, 0, 0] for p in train] == list(range(12))
    course.write_split(tmp_path, "validate", frames, cond, start=0, per_file=1)  # traj_10 after traj_2
    validate = course.list_sequences(tmp_path, "validate")
    assert [p.parent.name for p in validate] == [f"traj_{i}_to_{i}.tfrecords" for i in range(12)]


def test_start_numbers_files(tmp_path: Path) -> None:
    frames, cond = random_batch(3, t=1)
    course.write_split(tmp_path, "validate", frames, cond, start=256, per_file=2)
    seqs = course.list_sequences(tmp_path, "validate")
    rel = [str(p.relative_to(tmp_path / "validate")) for p in seqs]
    assert rel == ["traj_256_to_257.tfrecords/0", "traj_256_to_257.tfrecords/1", "traj_258_to_259.tfrecords/0"]


def test_shorter_seq_len_reads_a_prefix(written: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, frames, cond = written
    got_frames, got_cond = course.read_sequence(course.list_sequences(root, "train")[0], seq_len=12)
    np.testing.assert_array_equal(got_frames, frames[0, :12])
    np.testing.assert_array_equal(bits(got_cond), bits(cond[0, :12]))


def test_bair_schema_samples_round_trip(tmp_path: Path) -> None:
    for name, aux, _, actions, positions in bair_samples():  # generated always, the real one when present
        cond = np.concatenate([actions, positions], axis=1)[None]
        course.write_split(tmp_path / name, "test", aux[None], cond)
        (seq,) = course.list_sequences(tmp_path / name, "test")
        got_frames, got_cond = course.read_sequence(seq)
        np.testing.assert_array_equal(got_frames, aux, err_msg=name)
        np.testing.assert_array_equal(bits(got_cond), bits(cond[0]), err_msg=name)


# writing


def test_rewrite_replaces_and_leaves_no_temp(written: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, frames, cond = written
    course.write_split(root, "train", frames[::-1].copy(), cond[::-1].copy())
    seqs = course.list_sequences(root, "train")
    np.testing.assert_array_equal(course.read_sequence(seqs[0])[0], frames[1])
    leftovers = [p for p in (root / "train").rglob(".*")]
    assert leftovers == []


def test_failed_write_leaves_no_half_sequence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames, cond = random_batch(2, t=4)
    real_imwrite = course.iio.imwrite
    calls = []

    def flaky_imwrite(*args, **kwargs):
        calls.append(1)
        if len(calls) == 6:  # fail inside the second sequence
            raise OSError("disk full")
        return real_imwrite(*args, **kwargs)

    monkeypatch.setattr(course.iio, "imwrite", flaky_imwrite)
    with pytest.raises(OSError, match="disk full"):
        course.write_split(tmp_path, "train", frames, cond)
    traj = tmp_path / "train/traj_0_to_255.tfrecords"
    assert sorted(p.name for p in traj.iterdir()) == ["0"]  # seq 0 complete, seq 1 and temp gone
    np.testing.assert_array_equal(course.read_sequence(traj / "0", seq_len=4)[0], frames[0])


def test_write_rejects_bad_arrays(tmp_path: Path) -> None:
    frames, cond = random_batch(1, t=2)
    with pytest.raises(ValueError, match="uint8"):
        course.write_split(tmp_path, "train", frames.astype(np.float32), cond)
    with pytest.raises(ValueError, match="cond"):
        course.write_split(tmp_path, "train", frames, cond[..., :4])
    with pytest.raises(ValueError, match="split"):
        course.write_split(tmp_path, "val", frames, cond)


# strict image reading, hidden names, numeric frame order


@pytest.mark.parametrize("kind", ["rgba", "gray", "gray_alpha", "palette"])
def test_refuses_anything_but_rgb_frames(written: tuple[Path, np.ndarray, np.ndarray], kind: str) -> None:
    root, frames, _ = written
    png = root / "train/traj_0_to_255.tfrecords/0/3.png"
    rgb = frames[0, 3]
    if kind == "palette":
        from PIL import Image

        Image.fromarray(rgb).quantize(16).save(png)
    else:
        gray = rgb[:, :, :1]
        image = {
            "rgba": np.dstack([rgb, np.full((64, 64), 7, np.uint8)]),
            "gray": gray[:, :, 0],
            "gray_alpha": np.dstack([gray, np.full((64, 64, 1), 9, np.uint8)]),
        }[kind]
        iio.imwrite(png, image)
    with pytest.raises(DataError, match="expected 8-bit RGB") as exc:
        course.read_sequence(png.parent)
    assert_one_line_naming(exc, png)


def test_hidden_names_are_ignored(written: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, frames, _ = written
    seq = root / "train/traj_0_to_255.tfrecords/0"
    (seq / ".DS_Store").write_bytes(b"\0")
    (seq / "._3.png").write_bytes(b"AppleDouble")  # macOS resource forks look like frames
    (root / "train/.traj_256_to_511.tfrecords/0").mkdir(parents=True)
    (root / "train/traj_0_to_255.tfrecords/.2").mkdir()
    assert [p.name for p in course.list_sequences(root, "train")] == ["0", "1"]
    np.testing.assert_array_equal(course.read_sequence(seq)[0], frames[0])


def test_frames_are_read_in_numeric_order(tmp_path: Path) -> None:
    # frame t is filled with the value t: 10.png must come after 9.png, not after 1.png
    frames = np.broadcast_to(np.arange(12, dtype=np.uint8)[None, :, None, None, None], (1, 12, 64, 64, 3))
    course.write_split(tmp_path, "train", frames, np.zeros((1, 12, 7), np.float32))
    got, _ = course.read_sequence(course.list_sequences(tmp_path, "train")[0], seq_len=12)
    assert got[:, 0, 0, 0].tolist() == list(range(12))


# bad inputs: one-line DataError naming the path


def test_missing_root(tmp_path: Path) -> None:
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as exc:
        course.list_sequences(root, "train")
    assert_one_line_naming(exc, root)


def test_missing_split_folder(written: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = written
    with pytest.raises(DataError) as exc:
        course.list_sequences(root, "validate")
    assert_one_line_naming(exc, root / "validate")


def test_empty_split(written: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = written
    (root / "test/traj_0_to_255.tfrecords").mkdir(parents=True)  # a file folder with no sequences
    (root / "test/notes.txt").write_text("not a sequence")
    with pytest.raises(DataError) as exc:
        course.list_sequences(root, "test")
    assert_one_line_naming(exc, root / "test")


def test_missing_frame(written: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = written
    seq = root / "train/traj_0_to_255.tfrecords/1"
    (seq / "17.png").unlink()
    with pytest.raises(DataError) as exc:
        course.read_sequence(seq)
    assert_one_line_naming(exc, seq / "17.png")


def test_missing_sequence_folder(tmp_path: Path) -> None:
    seq = tmp_path / "train/traj_0_to_255.tfrecords/4"
    with pytest.raises(DataError) as exc:
        course.read_sequence(seq)
    assert_one_line_naming(exc, seq)


def test_wrong_image_size(written: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = written
    png = root / "train/traj_0_to_255.tfrecords/0/5.png"
    iio.imwrite(png, np.zeros((32, 48, 3), np.uint8))
    with pytest.raises(DataError, match="48x32") as exc:
        course.read_sequence(png.parent)
    assert_one_line_naming(exc, png)


def test_unreadable_image(written: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = written
    png = root / "train/traj_0_to_255.tfrecords/0/0.png"
    png.write_bytes(b"not a png\nat all")
    with pytest.raises(DataError) as exc:
        course.read_sequence(png.parent)
    assert_one_line_naming(exc, png)


@pytest.mark.parametrize(
    ("name", "keep", "needle"),
    [
        ("actions.csv", slice(0, 29), "29 rows, expected 30"),
        ("actions.csv", slice(0, 0), "0 rows, expected 30"),
        ("endeffector_positions.csv", (slice(None), slice(0, 2)), "2 columns, expected 3"),
    ],
)
def test_csv_with_wrong_shape(
    written: tuple[Path, np.ndarray, np.ndarray], name: str, keep: object, needle: str
) -> None:
    root, _, _ = written
    csv = root / "train/traj_0_to_255.tfrecords/0" / name
    table = np.loadtxt(csv, delimiter=",", ndmin=2)[keep]
    np.savetxt(csv, table, fmt="%.9g", delimiter=",")
    with pytest.raises(DataError, match=needle) as exc:
        course.read_sequence(csv.parent)
    assert_one_line_naming(exc, csv)


def test_csv_missing_or_not_numbers(written: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, _, _ = written
    seq = root / "train/traj_0_to_255.tfrecords/0"
    (seq / "actions.csv").write_text("a,b,c,d\n" * 30)
    with pytest.raises(DataError) as exc:
        course.read_sequence(seq)
    assert_one_line_naming(exc, seq / "actions.csv")
    seq = root / "train/traj_0_to_255.tfrecords/1"
    (seq / "endeffector_positions.csv").unlink()
    with pytest.raises(DataError) as exc:
        course.read_sequence(seq)
    assert_one_line_naming(exc, seq / "endeffector_positions.csv")
