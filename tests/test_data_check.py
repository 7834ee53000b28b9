"""`cvae data check` and `cvae data bench` on intact data: counts, speeds, settings, usage errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from cvae.cli import main
from cvae.data import check, sample, speed

LAYOUT = {"train/traj_256_to_511": 1, "train/traj_512_to_767": 2, "train/traj_768_to_1023": 2, "test/traj_0_to_255": 1}


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same small data set as TFRecords and as a course tree."""
    base = tmp_path_factory.mktemp("trees")
    sample.write_dataset(base / "tfrecord", LAYOUT)
    assert main(["data", "convert", str(base / "tfrecord"), str(base / "bair"), "--workers", "1"]) == 0
    return {"tfrecord": base / "tfrecord", "bair": base / "bair"}


@pytest.mark.parametrize("kind", ["tfrecord", "bair"])
def test_check_counts_every_split_and_reports_speed(trees: dict[str, Path], kind: str, capsys) -> None:
    capsys.readouterr()
    assert main(["data", "check", str(trees[kind]), "--workers", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1:4] == ["  train: 4 sequences", "  validate: 1 sequences", "  test: 1 sequences"]
    assert out[4].startswith("all intact; ") and "sequences/s" in out[4]


def test_check_in_worker_processes_agrees(trees: dict[str, Path]) -> None:
    one, two = check.check(trees["bair"], workers=1), check.check(trees["bair"], workers=2)
    assert one.sequences == two.sequences == {"train": 4, "validate": 1, "test": 1}
    assert one.ok and two.ok and one.per_second > 0


def test_check_seq_len_longer_than_stored_is_damage(trees: dict[str, Path]) -> None:
    report = check.check(trees["tfrecord"], seq_len=31)
    assert len(report.bad) == 6 and all("lacks key '30/image_aux1/encoded'" in m for m in report.bad)


@pytest.mark.parametrize("command", ["check", "bench"])
def test_missing_root_exits_2(command: str, capsys) -> None:
    assert main(["data", command, "/nowhere/at/all"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "/nowhere/at/all does not exist" in err


@pytest.mark.parametrize("args", [["data", "check"], ["data", "check", ".", "--workers", "x"]])
def test_bad_arguments_exit_2(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(args)
    assert exc.value.code == 2


def test_check_of_a_folder_that_is_no_data_set(tmp_path: Path, capsys) -> None:
    (tmp_path / "photos").mkdir()
    assert main(["data", "check", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "neither a course tree" in err


@pytest.mark.parametrize("kind", ["tfrecord", "bair"])
def test_bench_measures_source_and_cache(trees: dict[str, Path], kind: str) -> None:
    result = speed.measure(trees[kind], sequences=3, batch_size=2, n_frames=4)
    assert result["source"] == kind and result["sequences"] == 3
    assert result["source_seq_per_s"] > 0 and result["cache_seq_per_s"] > 0
    assert (result["batch_size"], result["n_frames"], result["seq_len"]) == (2, 4, 30)


def test_bench_command_prints_settings_and_speeds(trees: dict[str, Path], capsys) -> None:
    assert main(["data", "bench", str(trees["bair"]), "-n", "2", "--batch-size", "2", "--frames", "3"]) == 0
    out = capsys.readouterr().out
    assert "2 sequences of 30 frames" in out and "batch 2 x 3 frames" in out
    assert "source files:" in out and "cache:" in out and out.count("sequences/s") == 2
