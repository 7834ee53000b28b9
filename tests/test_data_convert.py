"""`cvae data convert`: BAIR-schema TFRecords (real pixels) -> course tree and cache, exact, resumable, safe."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from helpers import cvae

from cvae.cli import main
from cvae.config import DataCfg
from cvae.data import course, load_split, sample, sources, to_tensors
from cvae.data.convert import MARKER

# three train files (the lowest becomes validate) and the test file, as in the download
LAYOUT = {"train/traj_256_to_511": 3, "train/traj_512_to_767": 2, "train/traj_2560_to_2815": 1, "test/traj_0_to_255": 2}
SPLIT_OF = {
    "train/traj_256_to_511": "validate",
    "train/traj_512_to_767": "train",
    "train/traj_2560_to_2815": "train",
    "test/traj_0_to_255": "test",
}


# helpers


def bits(a: np.ndarray) -> np.ndarray:
    """float32 values as their bit patterns, so comparisons are bit-exact."""
    return np.ascontiguousarray(a, np.float32).view(np.uint32)


def run(*args: str) -> int:
    """The `cvae` command in-process (its exit code)."""
    return main([str(a) for a in args])


def leftovers(folder: Path) -> list[Path]:
    """Hidden temp files or folders anywhere under folder, the marker excepted."""
    return [p for p in folder.rglob(".*") if p.name != MARKER]


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """softmotion30_44k/ with real pixels, both cameras, keys shuffled; and what each file holds."""
    root = tmp_path_factory.mktemp("bair")
    return root, sample.write_dataset(root, LAYOUT)


@pytest.fixture(scope="module")
def converted(source, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The course tree converted once from `source` (aux1 camera)."""
    dest = tmp_path_factory.mktemp("conv") / "course"
    assert run("data", "convert", source[0], dest, "--workers", "1") == 0
    return dest


# the fixture files


def test_fixture_records_are_the_package_writers_with_keys_shuffled(source, tmp_path: Path) -> None:
    import re

    from tfrecord import example_pb2
    from tfrecord.writer import TFRecordWriter

    from cvae.data import tfrecords

    data = sample.sequences(1, seq_len=30)
    sample.write_file(tmp_path / "shuffled.tfrecords", data, shuffle_keys=7)
    plain = TFRecordWriter(str(tmp_path / "plain.tfrecords"))  # the package's own writer, natural order
    plain.write(
        {
            k: v
            for i in range(30)
            for k, v in [
                (f"{i}/image_aux1/encoded", (data["aux1"][0, i].tobytes(), "byte")),
                (f"{i}/image_main/encoded", (data["main"][0, i].tobytes(), "byte")),
                (f"{i}/action", (data["action"][0, i].tolist(), "float")),
                (f"{i}/endeffector_pos", (data["position"][0, i].tolist(), "float")),
            ]
        }
    )
    plain.close()
    (a,), (b,) = (list(tfrecords.iter_records(tmp_path / n)) for n in ("shuffled.tfrecords", "plain.tfrecords"))
    assert len(a) == len(b) and example_pb2.Example.FromString(a) == example_pb2.Example.FromString(b)
    keys = re.findall(rb"\d+/(?:action|endeffector_pos|image_aux1/encoded|image_main/encoded)", a)
    assert len(keys) == 120 and keys != sorted(keys) and keys[:2] != [b"0/image_aux1/encoded", b"0/image_main/encoded"]


# to the course layout


def test_course_tree_is_pixel_and_value_exact(source, converted: Path) -> None:
    _, written = source
    for name, data in written.items():
        traj = converted / SPLIT_OF[name] / f"{Path(name).name}.tfrecords"
        seqs = course.sequence_folders(traj)
        assert [s.name for s in seqs] == [str(k) for k in range(len(data["aux1"]))]
        for k, seq in enumerate(seqs):
            frames, cond = course.read_sequence(seq)
            np.testing.assert_array_equal(frames, data["aux1"][k])
            np.testing.assert_array_equal(bits(cond[:, :4]), bits(data["action"][k]))
            np.testing.assert_array_equal(bits(cond[:, 4:]), bits(data["position"][k]))
    assert leftovers(converted) == []


def test_validate_is_the_lowest_train_file_as_users_know_it(converted: Path) -> None:
    names = {split: [p.name for p in course.traj_folders(converted, split)] for split in ("train", "validate", "test")}
    assert names == {
        "train": ["traj_512_to_767.tfrecords", "traj_2560_to_2815.tfrecords"],
        "validate": ["traj_256_to_511.tfrecords"],
        "test": ["traj_0_to_255.tfrecords"],
    }


def test_main_camera_and_chosen_validate_file(source, tmp_path: Path) -> None:
    root, written = source
    dest = tmp_path / "main"
    assert (
        run("data", "convert", root, dest, "--camera", "main", "--validate", "traj_512_to_767", "--workers", "1") == 0
    )
    frames, _ = course.read_sequence(dest / "validate/traj_512_to_767.tfrecords/1")
    np.testing.assert_array_equal(frames, written["train/traj_512_to_767"]["main"][1])
    assert [p.name for p in course.traj_folders(dest, "train")] == [
        "traj_256_to_511.tfrecords",
        "traj_2560_to_2815.tfrecords",
    ]


def test_parallel_workers_write_the_same_tree(source, converted: Path, tmp_path: Path) -> None:
    dest = tmp_path / "par"
    assert run("data", "convert", source[0], dest, "--workers", "2") == 0
    for split in ("train", "validate", "test"):
        a, b = course.list_sequences(converted, split), course.list_sequences(dest, split)
        assert [p.relative_to(converted) for p in a] == [p.relative_to(dest) for p in b]
        for x, y in zip(a, b):
            np.testing.assert_array_equal(course.read_sequence(x)[0], course.read_sequence(y)[0])


def test_second_run_skips_finished_files_and_redoes_changed_ones(source, tmp_path: Path, capsys) -> None:
    root = tmp_path / "src"
    shutil.copytree(source[0], root)
    dest = tmp_path / "course"
    assert run("data", "convert", root, dest, "--workers", "1") == 0
    before = {p: p.stat().st_mtime_ns for p in dest.rglob("*.png")}
    capsys.readouterr()
    assert run("data", "convert", root, dest, "--workers", "1") == 0
    assert "train: 0 sequences written, 3 kept from an earlier run" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in dest.rglob("*.png")} == before
    # a changed source file is converted again, the others are kept
    changed = root / "softmotion30_44k/test/traj_0_to_255.tfrecords"
    sample.write_file(changed, sample.sequences(1, start=40))
    assert run("data", "convert", root, dest, "--workers", "1") == 0
    assert "test: 1 sequences written" in capsys.readouterr().out
    assert [p.name for p in course.list_sequences(dest, "test")] == ["0"]
    np.testing.assert_array_equal(
        course.read_sequence(dest / "test/traj_0_to_255.tfrecords/0")[0], sample.sequences(1, start=40)["aux1"][0]
    )


def test_interrupted_run_leaves_only_hidden_temp_and_resumes(source, tmp_path: Path, monkeypatch) -> None:
    dest = tmp_path / "course"
    calls = []
    real = course.write_sequence

    def dies_in_the_third_file(folder, frames, cond):
        calls.append(folder)
        if len(calls) == 5:  # train's two files hold 3 sequences: the 2nd of validate's file
            raise KeyboardInterrupt
        return real(folder, frames, cond)

    monkeypatch.setattr(course, "write_sequence", dies_in_the_third_file)
    with pytest.raises(KeyboardInterrupt):
        from cvae.data import convert

        convert.to_course(source[0], dest)
    # finished files are whole and listed; nothing of the interrupted one is visible or left
    assert sorted(json.loads((dest / MARKER).read_text())["files"]) == [
        "train/traj_2560_to_2815.tfrecords",
        "train/traj_512_to_767.tfrecords",
    ]
    assert not (dest / "validate/traj_256_to_511.tfrecords").exists()
    assert leftovers(dest) == []
    monkeypatch.setattr(course, "write_sequence", real)
    calls.clear()
    assert run("data", "convert", source[0], dest, "--workers", "1") == 0
    assert [len(course.list_sequences(dest, s)) for s in ("train", "validate", "test")] == [3, 3, 2]


def test_refuses_a_foreign_or_differently_made_dest(source, converted: Path, tmp_path: Path, capsys) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    assert run("data", "convert", source[0], foreign) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(foreign) in err and "not empty" in err
    assert sorted(p.name for p in foreign.iterdir()) == ["notes.txt"]
    assert run("data", "convert", source[0], converted, "--camera", "main") == 2
    assert "camera 'aux1' (now 'main')" in capsys.readouterr().err


def test_usage_errors_exit_2(source, converted: Path, tmp_path: Path, capsys) -> None:
    assert run("data", "convert", tmp_path / "nowhere", tmp_path / "d") == 2
    assert run("data", "convert", converted, tmp_path / "d") == 2  # a course tree is not a TFRecord source
    assert "--to course converts those" in capsys.readouterr().err
    assert run("data", "convert", source[0], tmp_path / "d", "--to", "cache", "--camera", "main") == 2
    assert run("data", "convert", source[0], tmp_path / "d", "--validate", "traj_9_to_9") == 2
    assert not (tmp_path / "d").exists() or not any((tmp_path / "d" / s).exists() for s in ("train", "test"))


# to the cache


def test_to_cache_is_what_training_loads(source, tmp_path: Path, capsys) -> None:
    root, written = source
    dest = tmp_path / "cache"
    assert run("data", "convert", root, dest, "--to", "cache") == 0
    out = capsys.readouterr().out
    assert f"data.name=tfrecord data.root={root} data.cache_dir={dest}" in out
    cfg = DataCfg(name="tfrecord", root=str(root), cache_dir=str(dest))
    names = sorted(p.name for p in dest.iterdir())
    split = load_split(cfg, "train")  # found, not rebuilt
    assert sorted(p.name for p in dest.iterdir()) == names
    expected = np.concatenate([written["train/traj_512_to_767"]["aux1"], written["train/traj_2560_to_2815"]["aux1"]])
    np.testing.assert_array_equal(np.asarray(split.frames), expected)
    assert run("data", "convert", root, dest, "--to", "cache") == 0  # a second run keeps every split
    assert "train: 0 sequences written, 3 kept" in capsys.readouterr().out


def test_course_tree_to_cache_to_batches_equals_the_png_loader(converted: Path, tmp_path: Path) -> None:
    dest = tmp_path / "cache"
    assert run("data", "convert", converted, dest, "--to", "cache") == 0
    for split in ("train", "validate", "test"):
        cached = load_split(DataCfg(name="bair", root=str(converted), cache_dir=str(dest)), split)
        paths = course.list_sequences(converted, split)
        idx = np.arange(len(paths))[::-1]
        x, c = to_tensors(cached, idx, 12)
        frames, cond = zip(*(course.read_sequence(p, 12) for p in paths))
        import torch

        x_png = torch.from_numpy(np.stack(frames)).permute(0, 1, 4, 2, 3).float() / 255.0
        assert torch.equal(x, x_png) and torch.equal(c, torch.from_numpy(np.stack(cond)))


def test_cli_smoke_as_a_subprocess(source, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.run(
        cvae("data", "convert", str(source[0]), str(tmp_path / "d"), "--workers", "1"),
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert "validate: 3 sequences written" in proc.stdout
    assert sources.detect(tmp_path / "d") == "bair"


def test_parallel_damage_stops_and_keeps_what_finished(source, tmp_path: Path, capsys) -> None:
    root = tmp_path / "src"
    shutil.copytree(source[0], root)
    broken = root / "softmotion30_44k/train/traj_2560_to_2815.tfrecords"
    broken.write_bytes(broken.read_bytes()[:-1])
    dest = tmp_path / "course"
    assert run("data", "convert", root, dest, "--workers", "2") == 1
    assert str(broken) in capsys.readouterr().err
    assert not (dest / "train/traj_2560_to_2815.tfrecords").exists() and leftovers(dest) == []
    finished = json.loads((dest / MARKER).read_text())["files"]
    assert all((dest / name).is_dir() for name in finished)
    assert run("data", "convert", root, dest, "--workers", "2", "--skip-bad") == 0
    assert [p.parent.name for p in course.list_sequences(dest, "train")] == ["traj_512_to_767.tfrecords"] * 2
