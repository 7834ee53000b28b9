"""The cache: manifest, stale sources rebuilt, memory maps only, condition standardisation, flat memory."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from cvae import config as config_mod
from cvae.config import ConfigError, DataCfg
from cvae.data import cache, cache_key, course, load_split, sample, to_tensors

LAYOUT = {"train/traj_256_to_511": 2, "train/traj_512_to_767": 3, "test/traj_0_to_255": 1}


# helpers


@pytest.fixture
def source(tmp_path: Path) -> tuple[Path, dict[str, dict[str, np.ndarray]]]:
    """A small original-schema source (12 frames per sequence) and what each file holds."""
    root = tmp_path / "bair"
    return root, sample.write_dataset(root, LAYOUT, seq_len=12)


def cfg_for(root: Path, tmp_path: Path, **kw) -> DataCfg:
    return DataCfg(
        name=kw.pop("name", "tfrecord"),
        root=str(root),
        cache_dir=str(tmp_path / "cache"),
        seq_len=kw.pop("seq_len", 12),
        **kw,
    )


# manifest and memory maps


def test_manifest_records_source_counts_version_and_stats(source, tmp_path: Path) -> None:
    root, written = source
    cfg = cfg_for(root, tmp_path)
    split = load_split(cfg, "train")
    assert isinstance(split.frames, np.memmap) and isinstance(split.cond, np.memmap)  # nothing read whole
    folder = tmp_path / "cache" / cache_key(cfg, "train")
    manifest = json.loads((folder / "manifest.json").read_text())
    path = root / "softmotion30_44k/train/traj_512_to_767.tfrecords"
    assert manifest["format"] == cache.FORMAT and manifest["sequences"] == 3 and manifest["seq_len"] == 12
    assert manifest["source"]["fingerprint"]["files"] == [
        ["softmotion30_44k/train/traj_512_to_767.tfrecords", path.stat().st_size, path.stat().st_mtime_ns]
    ]
    held = written["train/traj_512_to_767"]
    cond = np.concatenate([held["action"], held["position"]], -1)
    rows = cond.reshape(-1, 7).astype(np.float64)
    np.testing.assert_allclose(manifest["cond_mean"], rows.mean(0), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(manifest["cond_std"], np.where(rows.std(0) > 0, rows.std(0), 1), rtol=1e-9)
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [folder.name]  # no temp left


def test_streamed_npy_files_are_ordinary_npy(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    seqs = [
        (rng.integers(0, 256, (3, 64, 64, 3), dtype=np.uint8), rng.standard_normal((3, 7)).astype(np.float32))
        for _ in range(5)
    ]
    manifest = cache.write(tmp_path, iter(seqs), 3, {"kind": "test"})
    frames, cond = np.load(tmp_path / "frames.npy"), np.load(tmp_path / "cond.npy")
    np.testing.assert_array_equal(frames, np.stack([f for f, _ in seqs]))
    np.testing.assert_array_equal(cond, np.stack([c for _, c in seqs]))
    assert manifest["sequences"] == 5
    cache.write(tmp_path, iter([]), 3, {"kind": "test"})
    assert np.load(tmp_path / "frames.npy").shape == (0, 3, 64, 64, 3)


# stale and missing sources


def test_changed_source_is_rebuilt_with_one_line(source, tmp_path: Path, caplog) -> None:
    root, _ = source
    cfg = cfg_for(root, tmp_path)
    assert len(load_split(cfg, "train")) == 3
    path = root / "softmotion30_44k/train/traj_512_to_767.tfrecords"
    sample.write_file(path, sample.sequences(4, start=20, seq_len=12))
    with caplog.at_level(logging.WARNING, logger="cvae.data"):
        split = load_split(cfg, "train")
    assert len(split) == 4
    np.testing.assert_array_equal(np.asarray(split.frames), sample.sequences(4, start=20, seq_len=12)["aux1"])
    (message,) = caplog.messages
    assert "\n" not in message and str(root) in message and "traj_512_to_767.tfrecords changed" in message
    assert "rebuilding" in message
    caplog.clear()
    load_split(cfg, "train")  # fresh again: no message, no rebuild
    assert caplog.messages == []


def test_course_tree_edit_in_place_is_seen(tmp_path: Path, caplog) -> None:
    frames = sample.sequences(2, seq_len=3)["aux1"]
    course.write_split(tmp_path / "tree", "train", frames, np.zeros((2, 3, 7), np.float32))
    cfg = cfg_for(tmp_path / "tree", tmp_path, name="bair", seq_len=3)
    load_split(cfg, "train")
    png = tmp_path / "tree/train/traj_0_to_255.tfrecords/1/2.png"
    course.write_sequence(png.parent, frames[0], np.ones((3, 7), np.float32))  # same names, new content
    os.utime(png, ns=(1, 1))  # whatever the clock's resolution, the mtime differs
    with caplog.at_level(logging.WARNING, logger="cvae.data"):
        split = load_split(cfg, "train")
    assert any("changed since its train cache was built" in m for m in caplog.messages)
    np.testing.assert_array_equal(np.asarray(split.frames[1]), frames[0])
    assert np.asarray(split.cond[1]).tolist() == np.ones((3, 7)).tolist()


def test_gone_source_uses_the_cache(source, tmp_path: Path, caplog) -> None:
    root, written = source
    cfg = cfg_for(root, tmp_path)
    load_split(cfg, "test")
    os.rename(root, tmp_path / "elsewhere")
    with caplog.at_level(logging.WARNING, logger="cvae.data"):
        split = load_split(cfg, "test")
    np.testing.assert_array_equal(np.asarray(split.frames), written["test/traj_0_to_255"]["aux1"])
    assert any("is gone; using its cache" in m for m in caplog.messages)


def test_cache_of_an_older_format_is_rebuilt(source, tmp_path: Path) -> None:
    root, _ = source
    cfg = cfg_for(root, tmp_path)
    folder = tmp_path / "cache" / cache_key(cfg, "test")
    folder.mkdir(parents=True)
    np.save(folder / "frames.npy", np.zeros((9, 12, 64, 64, 3), np.uint8))  # no manifest: not ours
    np.save(folder / "cond.npy", np.zeros((9, 12, 7), np.float32))
    assert len(load_split(cfg, "test")) == 1


# condition standardisation


def test_cond_norm_is_off_by_default_and_a_checked_bool() -> None:
    assert DataCfg().cond_norm is False
    cfg = config_mod.load(None, ["data.cond_norm=true"])
    assert cfg.data.cond_norm is True and "cond_norm: true" in config_mod.dump(cfg)
    with pytest.raises(ConfigError, match="data.cond_norm"):
        config_mod.load(None, ["data.cond_norm=maybe"])


def test_cond_norm_uses_training_statistics_for_every_split(source, tmp_path: Path) -> None:
    root, written = source
    raw = load_split(cfg_for(root, tmp_path), "validate")
    norm_cfg = cfg_for(root, tmp_path, cond_norm=True)
    train, validate = load_split(norm_cfg, "train"), load_split(norm_cfg, "validate")
    stats = json.loads((tmp_path / "cache" / cache_key(norm_cfg, "train") / "manifest.json").read_text())
    mean, std = np.float32(stats["cond_mean"]), np.float32(stats["cond_std"])
    np.testing.assert_array_equal(validate.cond_mean, mean)
    np.testing.assert_array_equal(train.cond_std, std)
    # standardised at load: every reader of split.cond (training batches, to_tensors) sees the same
    np.testing.assert_array_equal(validate.cond, (np.asarray(raw.cond) - mean) / std)
    _, c = to_tensors(validate, np.arange(2), 12)
    np.testing.assert_array_equal(c.numpy(), validate.cond)
    _, c = to_tensors(train, np.arange(3), 12)  # the training split comes out standardised
    np.testing.assert_allclose(c.numpy().reshape(-1, 7).mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(c.numpy().reshape(-1, 7).std(0), 1, atol=1e-4)
    _, c = to_tensors(raw, np.arange(2), 12)  # off: the raw values, as the course uses them
    np.testing.assert_array_equal(c.numpy()[0, :, :4], written["train/traj_256_to_511"]["action"][0])
    assert raw.cond_mean is None and isinstance(raw.cond, np.memmap)


# memory


RSS_SCRIPT = textwrap.dedent("""
    import re, sys
    from cvae.config import DataCfg
    from cvae.data import build_cache, sources
    # importing (torch comes with the tfrecord package) peaks higher than building: reset the peak
    # (VmHWM) once everything is imported, so that it measures the build alone
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    _, manifest = build_cache(DataCfg(name="tfrecord", root=sys.argv[1], cache_dir=sys.argv[2], seq_len=2), "train")
    status = open("/proc/self/status").read()
    print(manifest["sequences"], re.search(r"VmHWM:\\s+(\\d+) kB", status).group(1))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's resettable peak RSS")
def test_memory_stays_flat_from_1000_to_10000_sequences(tmp_path: Path) -> None:
    # one real-schema file of 250 two-frame records (both cameras), hard-linked as many train files
    one = tmp_path / "one.tfrecords"
    sample.write_file(one, sample.sequences(250, seq_len=2))
    peaks = {}
    for n in (1000, 10000):
        train = tmp_path / f"n{n}/softmotion30_44k/train"
        train.mkdir(parents=True)
        for i in range(n // 250 + 1):  # the lowest-numbered file is validate's
            os.link(one, train / f"traj_{i * 250}_to_{i * 250 + 249}.tfrecords")
        env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        proc = subprocess.run(
            [sys.executable, "-c", RSS_SCRIPT, str(tmp_path / f"n{n}"), str(tmp_path / f"c{n}")],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=True,
        )
        count, peak_kib = map(int, proc.stdout.split())
        assert count == n
        peaks[n] = peak_kib / 1024
    cache_mib = 9000 * 2 * 64 * 64 * 3 / 2**20  # 211 MiB more frames in the bigger cache
    print(f"peak RSS: {peaks[1000]:.0f} MiB for 1,000 sequences, {peaks[10000]:.0f} MiB for 10,000")
    assert peaks[10000] - peaks[1000] < 20, (peaks, cache_mib)
