"""The built-in procedural dataset "pushing": BAIR-like robot pushing videos with a 7-d condition.

Each sequence is a top-down view of a table (per-sequence colour, wood-grain and optional checker
texture, a darker tray rim) with 1-3 objects (discs or rotated squares, random colours, soft
shadows) and a robot gripper: a dark body with two darker jaws (apart when open, together when
closed), a thick dark arm reaching in from the top edge, and a shadow whose offset grows with height;
the body and arm also look bigger when the gripper is high. As in BAIR, the arm is most of what moves,
so the actions and positions decide a large share of the pixels (version 2; version 1's thin, light
arm on a noisy table left the condition too few pixels to learn from in a CPU budget). The arm follows smooth waypoint
trajectories that often aim through an object; when the gripper is low (z < Z_CONTACT) and overlaps
an object, the object is pushed out along the separation direction, may keep sliding, and stops at
the tray rim. The background never changes over time.

cond[:, t] (float32, as in BAIR):
    0:4  action at frame t: (dx, dy, dz, grip), the command that moves the gripper from frame t to
         t+1; dx, dy in units of ACTION_PX * size / 64 pixels, dz in units of ACTION_Z,
         grip +1 = closed, -1 = open (the jaws show it from frame t+1 on)
    4:7  end-effector position in frame t: x, y in [-1, 1] (left->right, top->bottom), z in [0, 1]

Hidden per-sequence randomness (not in cond), so the future is not a function of the actions:
each object's push gain and sliding decay (friction) and a random deflection of every push, the
arm's gain error and slip noise on every realised move (cond holds the realised position, but the
next realised move is unknown).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from cvae.data.scenes import (
    ARM_BASE_Y,
    ARM_HALF_WIDTH,
    ARM_HALF_WIDTH_Z,
    GRIP_RADIUS,
    Scene,
    Trajectory,
    norm,
    sample_scene,
    simulate,
)

VERSION = 2  # bump when the generated data changes: it is part of the data cache key


# helpers


def _open_patch(
    canvas: np.ndarray, cx: np.ndarray, cy: np.ndarray, half: int, rows: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple]:
    """Copy the (2*half)^2 window around (cx, cy) of each image in `rows` (default all): float32 (m, 3, P, P).

    Returns the patch, pixel offsets from the centre dx (m, 1, P) and dy (m, P, 1), and a handle for
    _close_patch. Windows are views of the canvas, so reading and writing them is one block copy per
    sequence instead of per-pixel fancy indexing (about 10x faster).
    """
    size = canvas.shape[1]
    p = min(2 * half, size)
    x0 = np.clip(np.floor(cx).astype(np.int64) - p // 2 + 1, 0, size - p)
    y0 = np.clip(np.floor(cy).astype(np.int64) - p // 2 + 1, 0, size - p)
    view = sliding_window_view(canvas, (p, p), axis=(1, 2), writeable=True)  # (n, ., ., 3, P, P)
    rows = np.arange(canvas.shape[0]) if rows is None else rows
    patch = view[rows, y0, x0].astype(np.float32)
    ar = np.arange(p)
    dx = (x0[:, None] + ar - cx[:, None]).astype(np.float32)[:, None, :]
    dy = (y0[:, None] + ar - cy[:, None]).astype(np.float32)[:, :, None]
    return patch, dx, dy, (view, rows, y0, x0)


def _close_patch(handle: tuple, patch: np.ndarray) -> None:
    """Write a float patch (values in [0, 255]) back into the uint8 canvas."""
    view, rows, y0, x0 = handle
    view[rows, y0, x0] = (patch + 0.5).astype(np.uint8)


def _blend(patch: np.ndarray, alpha: np.ndarray, color: np.ndarray | float) -> None:
    """In place: patch = patch * (1 - alpha) + color * alpha; patch (n, 3, ...), alpha (n, ...)."""
    patch += alpha[:, None] * (color - patch)


def _coverage(dist: np.ndarray, radius: np.ndarray | float, soft: np.ndarray | float = 1.0) -> np.ndarray:
    """Anti-aliased coverage of a shape from the distance to its centre (or box norm), in place on dist."""
    dist -= radius
    if not np.isscalar(soft):
        dist /= soft
    np.subtract(0.5, dist, out=dist)
    return np.clip(dist, 0, 1, out=dist)


def _col(v: np.ndarray) -> np.ndarray:
    """Per-sequence scalars (n,) as float32 (n, 1, 1) for broadcasting over a patch."""
    return np.asarray(v, dtype=np.float32)[:, None, None]


def _draw_objects(canvas: np.ndarray, scene: Scene, obj: np.ndarray) -> None:
    """Objects with a drop shadow; discs or rotated squares with dome shading."""
    s = scene.size / 64
    f32 = np.float32
    off = max(1, int(round(1.2 * s)))  # shadow offset, whole pixels so it is a shifted copy
    half = int(np.ceil(1.2 * 7 * s + 0.5 + off)) + 1  # 1.2 r: corner of a square
    for k in range(obj.shape[1]):
        # one call per shape over only the sequences that have it: no work for absent objects
        for square in (False, True):
            rows = np.flatnonzero(scene.obj_active[:, k] & (scene.obj_square[:, k] == square))
            if rows.size == 0:
                continue
            patch, dx, dy, handle = _open_patch(canvas, obj[rows, k, 0], obj[rows, k, 1], half, rows)
            r = scene.obj_r[rows, k]
            d2 = dx * dx + dy * dy
            if square:
                ca, sa = _col(np.cos(scene.obj_angle[rows, k])), _col(np.sin(scene.obj_angle[rows, k]))
                dist = np.maximum(np.abs(ca * dx + sa * dy), np.abs(ca * dy - sa * dx))
                cover = _coverage(dist, _col(0.85 * r))
            else:
                cover = _coverage(np.sqrt(d2), _col(r))
            shadow = np.zeros_like(cover)
            shadow[:, off:, off:] = cover[:, :-off, :-off]
            # both layers at once: p * (1 - 0.35 shadow) * (1 - cover) + colour * cover * shade
            keep = (1 - f32(0.35) * shadow) * (1 - cover)
            shade = np.maximum(1 - d2 * _col(0.3 / r**2), f32(0.6))
            patch *= keep[:, None]
            patch += (scene.obj_color[rows, k] * 255).astype(f32)[:, :, None, None] * (cover * shade)[:, None]
            _close_patch(handle, patch)


def _draw_arm(
    canvas: np.ndarray, scene: Scene, gx: np.ndarray, gy: np.ndarray, z: np.ndarray, rows: np.ndarray
) -> None:
    """A shaded bar from the base above the top edge down to the gripper, one x-window per image row.

    Draws for the sequences in `rows` only (gx, gy, z are theirs) and only over the image rows down
    to the lowest of their grippers: the caller groups sequences by gripper height to skip empty rows.
    """
    size = scene.size
    s = size / 64
    f32 = np.float32
    base_y = ARM_BASE_Y * s
    slope = (gx - scene.arm_base_x[rows]) / (gy - base_y)  # x change per image row
    hw = _col((ARM_HALF_WIDTH + ARM_HALF_WIDTH_Z * z) * s)  # wider when closer to the camera
    max_slope = (0.65 * size) / (-base_y)
    p = min(2 * (int(np.ceil(((ARM_HALF_WIDTH + ARM_HALF_WIDTH_Z) * s + 0.5) * np.sqrt(1 + max_slope**2))) + 1), size)
    ys = np.arange(min(size, int(np.floor(gy.max())) + 1))
    xc = gx[:, None] + (ys[None] - gy[:, None]) * slope[:, None]  # (m, rows)
    x0 = np.clip(np.floor(xc).astype(np.int64) - p // 2 + 1, 0, size - p)
    view = sliding_window_view(canvas, p, axis=2, writeable=True)  # (n, H, ., 3, P)
    index = (rows[:, None], ys[None], x0)
    patch = view[index].astype(f32)  # (m, rows, 3, P)
    dist = np.abs((x0 - xc)[:, :, None] + np.arange(p)).astype(f32)
    dist *= _col(1 / np.sqrt(1 + slope * slope))  # perpendicular distance to the bar's axis
    # cylinder-like highlight across the bar
    shade = np.maximum(1 - dist * dist * (f32(0.45) / (hw * hw)), f32(0.55))
    alpha = _coverage(dist, hw)
    alpha *= (ys[None, :] <= gy[:, None])[:, :, None]
    patch *= (1 - alpha)[:, :, None]
    patch += (scene.arm_color[rows] * 255).astype(f32)[:, None, :, None] * (alpha * shade)[:, :, None]
    view[index] = (patch + 0.5).astype(np.uint8)


def _draw_gripper(
    canvas: np.ndarray, scene: Scene, gx: np.ndarray, gy: np.ndarray, z: np.ndarray, grip: np.ndarray
) -> None:
    """The gripper's shadow, the arm, then the body with two jaws (apart when open)."""
    s = scene.size / 64
    f32 = np.float32
    rg = GRIP_RADIUS * s * (0.9 + 0.35 * z)  # apparent size grows with height
    rg_max = GRIP_RADIUS * s * 1.25
    # shadow: offset down-right, farther and blurrier when high
    off = (1.0 + 5.0 * z) * s
    patch, dx, dy, handle = _open_patch(canvas, gx + off, gy + off, int(np.ceil(1.1 * rg_max + 1.5)) + 1)
    alpha = _coverage(np.sqrt(dx * dx + dy * dy), _col(1.1 * rg), _col(1.0 + 2.0 * z))
    alpha *= _col(0.4 * (1 - 0.4 * z))
    patch *= (1 - alpha)[:, None]
    _close_patch(handle, patch)

    # sequences grouped by gripper height: a group only needs the image rows above its lowest gripper
    for rows in np.array_split(np.argsort(gy, kind="stable"), 4):
        if rows.size:
            _draw_arm(canvas, scene, gx[rows], gy[rows], z[rows], rows)

    # the jaws sit across the arm direction
    axis = np.stack([gx - scene.arm_base_x, gy - ARM_BASE_Y * s], axis=-1)
    axis /= norm(axis)[:, None]
    spread = rg * np.where(grip > 0, 0.45, 0.8)
    jx, jy = _col(-axis[:, 1] * spread), _col(axis[:, 0] * spread)
    rj = _col(0.4 * rg)
    patch, dx, dy, handle = _open_patch(canvas, gx, gy, int(np.ceil(1.2 * rg_max + 0.5)) + 1)
    body = _coverage(np.sqrt(dx * dx + dy * dy), _col(rg))
    _blend(patch, body, (scene.body_color * 255)[:, :, None, None])
    jaw1 = _coverage(np.sqrt((dx - jx) ** 2 + (dy - jy) ** 2), rj)
    jaw2 = _coverage(np.sqrt((dx + jx) ** 2 + (dy + jy) ** 2), rj)
    _blend(patch, np.maximum(jaw1, jaw2), f32(30.0))
    _close_patch(handle, patch)


def _render_chunk(frames: np.ndarray, scene: Scene, traj: Trajectory, rows: slice) -> None:
    """Draw every frame of the sequences in `rows` into `frames`."""
    part = _slice_scene(scene, rows)
    obj_pos = traj.obj_pos[rows]
    # the table with its objects is redrawn only for sequences whose objects moved
    table = np.empty_like(part.background)
    # a small contiguous canvas stays in cache while all layers are drawn, then is copied out once
    canvas = np.empty_like(part.background)
    for t in range(frames.shape[1]):
        if t == 0:
            redraw = np.arange(len(table))
        else:
            redraw = np.flatnonzero((obj_pos[:, t] != obj_pos[:, t - 1]).any(axis=(1, 2)))
        if redraw.size:
            moved = _slice_scene(part, redraw)
            _draw_objects(moved.background, moved, obj_pos[redraw, t])  # draws on a fresh copy
            table[redraw] = moved.background
        canvas[...] = table
        ee = traj.ee[rows, t]
        _draw_gripper(canvas, part, ee[:, 0], ee[:, 1], ee[:, 2], traj.grip[rows, t])
        frames[rows, t] = canvas


def _render(scene: Scene, traj: Trajectory, chunk: int = 128) -> np.ndarray:
    """Frames uint8 (n, T, H, W, 3) of a simulated trajectory."""
    n, seq_len = traj.grip.shape
    size = scene.size
    frames = np.empty((n, seq_len, size, size, 3), dtype=np.uint8)
    # chunks keep the float temporaries inside the L2 cache; numpy releases the GIL in its loops,
    # so threads over disjoint chunks use every core (drawing draws no random numbers: deterministic)
    chunks = [slice(a, a + chunk) for a in range(0, n, chunk)]
    workers = min(len(chunks), _cpus(), 4)
    if workers <= 1:
        for rows in chunks:
            _render_chunk(frames, scene, traj, rows)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(lambda rows: _render_chunk(frames, scene, traj, rows), chunks))
    return frames


def _cpus() -> int:
    """CPUs this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _slice_scene(scene: Scene, rows: slice | np.ndarray) -> Scene:
    """The scene of a subset of sequences (index arrays give copies)."""
    fields = {f.name: getattr(scene, f.name) for f in dataclasses.fields(scene)}
    return Scene(**{k: v if k == "size" else v[rows] for k, v in fields.items()})


def _cond(traj: Trajectory, size: int) -> np.ndarray:
    """Assemble cond (n, T, 7) float32 from actions and realised end-effector positions."""
    ee = traj.ee.copy()
    ee[..., :2] = ee[..., :2] / (size - 1) * 2 - 1
    return np.concatenate([traj.actions, ee.astype(np.float32)], axis=-1)


def _generate(
    n: int, seed: int | Sequence[int], seq_len: int, size: int
) -> tuple[np.ndarray, np.ndarray, Scene, Trajectory]:
    """generate() plus the scene and trajectory behind it (for tests and debugging)."""
    if n < 1 or seq_len < 1 or size < 16:
        raise ValueError(f"pushing: need n >= 1, seq_len >= 1, size >= 16; got {n=}, {seq_len=}, {size=}")
    rng = np.random.default_rng(seed)
    scene = sample_scene(rng, n, size)
    traj = simulate(rng, scene, seq_len)
    return _render(scene, traj), _cond(traj, size), scene, traj


def generate(n: int, seed: int | Sequence[int], seq_len: int = 30, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Return (frames uint8 (n, seq_len, size, size, 3), cond float32 (n, seq_len, 7)) for n sequences."""
    frames, cond, _, _ = _generate(n, seed, seq_len, size)
    return frames, cond
