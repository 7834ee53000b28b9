"""The procedural "pushing" dataset: shapes, determinism, cond semantics, pushes, hidden randomness."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cvae.data import pushing, scenes


@pytest.fixture(scope="module")
def batch():
    """One shared batch with its scene and trajectory (generating is the slow part)."""
    return pushing._generate(64, 0, 30, 64)


def _replay(scene: scenes.Scene, actions: np.ndarray, seed: int) -> tuple[np.ndarray, scenes.Trajectory]:
    """Frames and trajectory of a scene driven open-loop by given actions."""
    traj = scenes.simulate(np.random.default_rng(seed), scene, actions.shape[1], actions=actions)
    return pushing._render(scene, traj), traj


def test_shapes_dtypes_and_ranges(batch):
    frames, cond, _, _ = batch
    assert frames.shape == (64, 30, 64, 64, 3) and frames.dtype == np.uint8
    assert cond.shape == (64, 30, 7) and cond.dtype == np.float32
    assert np.isfinite(cond).all()
    assert np.abs(cond[..., :3]).max() <= 3.0  # actions are O(1)
    assert set(np.unique(cond[..., 3])) <= {-1.0, 1.0}
    assert np.abs(cond[..., 4:6]).max() <= 1.0
    assert cond[..., 6].min() >= 0.0 and cond[..., 6].max() <= 1.0
    assert frames.std() > 10  # not blank


def test_public_generate_matches_and_respects_arguments():
    frames, cond = pushing.generate(3, 5, seq_len=7, size=32)
    assert frames.shape == (3, 7, 32, 32, 3) and cond.shape == (3, 7, 7)
    f2, c2, _, _ = pushing._generate(3, 5, 7, 32)
    assert np.array_equal(frames, f2) and np.array_equal(cond, c2)
    one, _ = pushing.generate(1, 0, seq_len=2)
    assert one.shape == (1, 2, 64, 64, 3)


def test_deterministic_and_seed_dependent():
    a_frames, a_cond = pushing.generate(4, 1, seq_len=6)
    b_frames, b_cond = pushing.generate(4, 1, seq_len=6)
    assert a_frames.tobytes() == b_frames.tobytes() and a_cond.tobytes() == b_cond.tobytes()
    c_frames, c_cond = pushing.generate(4, 2, seq_len=6)
    assert not np.array_equal(a_frames, c_frames) and not np.array_equal(a_cond, c_cond)
    # seed lists are how callers make disjoint split streams
    d_frames, _ = pushing.generate(4, [1, 2], seq_len=6)
    e_frames, _ = pushing.generate(4, [1, 3], seq_len=6)
    assert not np.array_equal(d_frames, e_frames) and not np.array_equal(d_frames, a_frames)
    # every sequence in a batch is its own scene
    assert not np.array_equal(a_frames[0], a_frames[1])


def test_actions_move_the_gripper(batch):
    _, cond, _, traj = batch
    moved = np.diff(cond[:, :, 4:6], axis=1)  # realised ee change from frame t to t+1
    commanded = cond[:, :-1, 0:2]  # action at frame t
    for axis in (0, 1):
        assert np.corrcoef(moved[..., axis].ravel(), commanded[..., axis].ravel())[0, 1] > 0.9
    step = np.linalg.norm(np.diff(traj.ee[..., :2], axis=1), axis=-1)
    assert 1.0 < np.median(step) < 4.0  # a few pixels per frame


def test_exact_actions_without_slip_give_exact_moves():
    rng = np.random.default_rng(3)
    scene = scenes.sample_scene(rng, 16, 64)
    actions = scenes.simulate(rng, scene, 12).actions
    exact = dataclasses.replace(scene, arm_gain=np.ones(16), slip=np.zeros(16))
    _, traj = _replay(exact, actions, 0)
    step = np.diff(traj.ee, axis=1)
    lo, hi = scenes.bounds(64, scenes.GRIP_RADIUS)
    inside = (traj.ee[:, 1:, :2] > lo + 0.5).all(-1) & (traj.ee[:, 1:, :2] < hi - 0.5).all(-1)  # not clipped
    expect = actions[:, :-1, :2] * scenes.ACTION_PX
    assert np.allclose(step[..., :2][inside], expect[inside], atol=1e-4)
    assert np.allclose(step[..., 2], actions[:, :-1, 2] * scenes.ACTION_Z, atol=1e-4)


def test_objects_get_pushed(batch):
    _, _, scene, traj = batch
    travel = np.linalg.norm(traj.obj_pos[:, -1] - traj.obj_pos[:, 0], axis=-1)  # (n, K)
    pushed = (np.where(scene.obj_active, travel, 0.0) > 2.0).any(axis=1)
    assert pushed.mean() > 0.3
    # objects stay on the table
    lo, hi = scenes.bounds(64, scene.obj_r)
    pos = traj.obj_pos
    assert (pos >= lo[:, None, :, None] - 1e-9).all() and (pos <= hi[:, None, :, None] + 1e-9).all()


def test_hidden_parameters_change_the_future():
    rng = np.random.default_rng(7)
    scene = scenes.sample_scene(rng, 32, 64)
    actions = scenes.simulate(rng, scene, 30).actions
    frames_a, traj_a = _replay(scene, actions, 0)
    # same layout, looks and actions; other friction, push gain, deflection and slip
    hidden = np.random.default_rng(8)
    other = dataclasses.replace(
        scene,
        obj_gain=hidden.uniform(0.0, 0.9, scene.obj_gain.shape),
        obj_decay=hidden.uniform(0.3, 0.85, scene.obj_decay.shape),
        obj_spin=hidden.uniform(0.0, 0.5, scene.obj_spin.shape),
        arm_gain=hidden.uniform(0.85, 1.1, scene.arm_gain.shape),
    )
    frames_b, traj_b = _replay(other, actions, 1)
    assert np.array_equal(frames_a[:, 0], frames_b[:, 0])  # the same first frame
    diverged = np.abs(traj_a.obj_pos[:, -1] - traj_b.obj_pos[:, -1]).max(axis=(1, 2)) > 1.0
    assert diverged.mean() > 0.3
    assert not np.array_equal(frames_a[:, -1], frames_b[:, -1])
    # even with identical hidden parameters, slip noise makes replays differ
    frames_c, _ = _replay(scene, actions, 2)
    assert not np.array_equal(frames_a, frames_c)


def test_nothing_moves_without_actions():
    rng = np.random.default_rng(4)
    scene = dataclasses.replace(scenes.sample_scene(rng, 8, 64), slip=np.zeros(8))
    actions = np.zeros((8, 10, 4), dtype=np.float32)
    actions[..., 3] = scene.grip0[:, None]
    frames, _ = _replay(scene, actions, 0)
    assert (frames == frames[:, :1]).all()


def test_background_is_static_away_from_the_arm_and_objects(batch):
    frames, _, scene, traj = batch
    n, size = len(frames), frames.shape[2]
    yy, xx = np.mgrid[0:size, 0:size]
    checked = 0
    for i in range(n):
        # the arm only covers rows above the gripper; its shadow reaches ~14 px down-right
        quiet = yy > traj.ee[i, :, 1].max() + 16
        for k in np.flatnonzero(scene.obj_active[i]):
            for x, y in traj.obj_pos[i, :, k]:
                quiet &= (xx - x) ** 2 + (yy - y) ** 2 > (1.25 * scene.obj_r[i, k] + 4) ** 2
        assert (frames[i][:, quiet] == scene.background[i][quiet]).all()
        checked += quiet.sum()
    assert checked > 0.05 * n * size * size
    # and overall only a small part of the image changes from one frame to the next
    changed = (np.abs(np.diff(frames.astype(np.int16), axis=1)).max(-1) > 2).mean()
    assert changed < 0.2


def test_grip_changes_the_look():
    rng = np.random.default_rng(9)
    scene = dataclasses.replace(scenes.sample_scene(rng, 4, 64), slip=np.zeros(4))
    actions = np.zeros((4, 3, 4), dtype=np.float32)
    actions[:, 0, 3], actions[:, 1, 3] = 1.0, -1.0  # closed in frame 1, open in frame 2
    frames, traj = _replay(scene, actions, 0)
    assert (traj.grip[:, 1] == 1).all() and (traj.grip[:, 2] == -1).all()
    assert (frames[:, 1] != frames[:, 2]).any(axis=(1, 2, 3)).all()


def test_rendering_does_not_depend_on_chunking():
    rng = np.random.default_rng(11)
    scene = scenes.sample_scene(rng, 20, 32)
    traj = scenes.simulate(rng, scene, 6)
    assert np.array_equal(pushing._render(scene, traj, chunk=7), pushing._render(scene, traj, chunk=128))


def test_bad_arguments_fail_loudly():
    with pytest.raises(ValueError, match="n >= 1"):
        pushing.generate(0, 1)
    with pytest.raises(ValueError, match="size >= 16"):
        pushing.generate(2, 1, size=8)
