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
from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

VERSION = 2  # bump when the generated data changes: it is part of the data cache key
ACTION_PX = 4.0  # pixels (at size 64) per unit of dx, dy: keeps actions O(1)
ACTION_Z = 0.1  # height per unit of dz
Z_CONTACT = 0.3  # below this height the gripper touches objects
MAX_OBJECTS = 3
GRIP_RADIUS = 6.0  # collision radius of the gripper at size 64, pixels
RIM = 3.0  # tray rim width at size 64, pixels; objects and gripper stay inside it
ARM_BASE_Y = -70.0  # the arm's base sits this far above the top edge (size 64): a gentle lean
TEXTURE_NOISE = 0.0  # per-pixel noise of the table's texture (relative brightness std); v1 had 0.02
ARM_GREY_LOW, ARM_GREY_HIGH = 0.15, 0.35  # a dark arm on a light table, as in BAIR (v1: 0.6-0.85)
ARM_HALF_WIDTH = 3.5  # arm half-width at z = 0 (size 64), pixels; ARM_HALF_WIDTH_Z more at z = 1 (v1: 1.8 + 1.0 z)
ARM_HALF_WIDTH_Z = 1.5


# helpers


@dataclass
class _Scene:
    """Everything fixed per sequence: layout, looks and the hidden physical parameters."""

    size: int
    ee0: np.ndarray  # (n, 2) gripper x, y in pixels
    z0: np.ndarray  # (n,)
    grip0: np.ndarray  # (n,) +1 closed, -1 open
    speed: np.ndarray  # (n,) controller's top speed, pixels per frame
    arm_gain: np.ndarray  # (n,) hidden: realised / commanded move
    slip: np.ndarray  # (n,) hidden: std of the additive move noise, pixels
    obj_pos0: np.ndarray  # (n, K, 2) pixels
    obj_r: np.ndarray  # (n, K) collision radius, pixels
    obj_active: np.ndarray  # (n, K) bool; 1-3 objects per sequence
    obj_square: np.ndarray  # (n, K) bool
    obj_angle: np.ndarray  # (n, K) rotation of squares
    obj_color: np.ndarray  # (n, K, 3) in [0, 1]
    obj_gain: np.ndarray  # (n, K) hidden: slide velocity per pixel of push
    obj_decay: np.ndarray  # (n, K) hidden: slide velocity kept per frame
    obj_spin: np.ndarray  # (n, K) hidden: std of the push deflection, radians
    arm_base_x: np.ndarray  # (n,) pixels; the base sits above the top edge
    arm_color: np.ndarray  # (n, 3)
    body_color: np.ndarray  # (n, 3)
    background: np.ndarray  # (n, H, W, 3) uint8


@dataclass
class _Trajectory:
    """The simulated states of every frame and the commands between them."""

    actions: np.ndarray  # (n, T, 4) float32 cond layout
    ee: np.ndarray  # (n, T, 3) x, y in pixels, z in [0, 1]
    grip: np.ndarray  # (n, T) grip state shown in each frame
    obj_pos: np.ndarray  # (n, T, K, 2) pixels


def _hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB in [0, 1]; returns (..., 3) float32."""
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return (v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0, 1)).astype(np.float32)


def _norm(v: np.ndarray) -> np.ndarray:
    """Euclidean length over the last axis (size 2)."""
    return np.sqrt(v[..., 0] ** 2 + v[..., 1] ** 2)


def _rotate(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate 2-vectors (..., 2) by angles (...)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], axis=-1)


def _bounds(size: int, radius: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Lowest and highest centre coordinate of a disc of `radius` inside the tray rim."""
    rim = RIM * size / 64
    return rim + radius, size - 1 - rim - radius


def _background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Static textured tables: random muted colour, wood grain, optional checker, tray rim."""
    s = size / 64
    f32 = np.float32
    base = _hsv_to_rgb(rng.random(n), rng.uniform(0.05, 0.4, n), rng.uniform(0.45, 0.8, n))
    xy = np.arange(size, dtype=f32)
    theta = rng.uniform(0, np.pi, n).astype(f32)
    freq = (rng.uniform(0.15, 0.6, n) / s).astype(f32)
    warp, warp_freq = rng.uniform(0, 3, n).astype(f32), (rng.uniform(0.05, 0.15, n) / s).astype(f32)
    p1, p2 = rng.uniform(0, 2 * np.pi, (2, n)).astype(f32)
    c, sn = np.cos(theta)[:, None], np.sin(theta)[:, None]
    # (n, H, W) grain: u along the grain direction, v across, built from separable (n, H)/(n, W) parts
    u = (c * xy)[:, None, :] + (sn * xy)[:, :, None]
    v = (-sn * xy)[:, None, :] + (c * xy)[:, :, None]
    bend = warp[:, None, None] * np.sin(warp_freq[:, None, None] * v + p2[:, None, None])
    tex = np.sin(freq[:, None, None] * u + bend + p1[:, None, None])
    tex *= rng.uniform(0.03, 0.12, n).astype(f32)[:, None, None]
    # tiles on about half of the tables
    cell = (rng.uniform(6, 16, n) * s).astype(f32)[:, None]
    ox, oy = (rng.uniform(0, 32, (2, n)) * s).astype(f32)[:, :, None]
    cx = np.floor((xy + ox) / cell).astype(np.int32)
    cy = np.floor((xy + oy) / cell).astype(np.int32)
    checker = ((cx[:, None, :] + cy[:, :, None]) % 2).astype(f32) * 2 - 1
    tex += checker * (rng.uniform(0.03, 0.1, n) * (rng.random(n) < 0.5)).astype(f32)[:, None, None]
    tex += rng.standard_normal((n, size, size), dtype=f32) * f32(TEXTURE_NOISE)
    tex += 1
    # the tray rim is a darker, plainer band around the table
    rim = RIM * s
    edge = np.minimum(xy, size - 1 - xy)
    on_rim = (np.minimum(edge[:, None], edge[None, :]) < rim)[None]
    tex = np.where(on_rim, f32(0.55) + (tex - 1) * f32(0.3), tex)
    img = tex[..., None] * base[:, None, None, :]
    return (np.clip(img, 0, 1) * 255 + 0.5).astype(np.uint8)


def _sample_scene(rng: np.random.Generator, n: int, size: int) -> _Scene:
    """Draw layouts, looks and hidden parameters for n sequences."""
    s = size / 64
    k = MAX_OBJECTS
    grip_r = GRIP_RADIUS * s
    lo, hi = _bounds(size, grip_r)
    n_obj = rng.integers(1, k + 1, n)
    obj_r = rng.uniform(4, 7, (n, k)) * s
    olo, ohi = _bounds(size, obj_r)
    active = np.arange(k)[None] < n_obj[:, None]
    # objects start apart (and so at rest): the first of 16 candidates clear of the earlier objects
    obj_pos = np.empty((n, k, 2))
    for j in range(k):
        cand = olo[:, j, None, None] + rng.random((n, 16, 2)) * (ohi - olo)[:, j, None, None]
        clear = np.ones((n, 16), dtype=bool)
        for i in range(j):
            gap = _norm(cand - obj_pos[:, i, None]) - obj_r[:, i, None] - obj_r[:, j, None]
            clear &= (gap > 1.0) | ~active[:, i, None]
        obj_pos[:, j] = cand[np.arange(n), np.argmax(clear, axis=1)]
    hue = rng.random((n, k))
    obj_color = _hsv_to_rgb(hue, rng.uniform(0.6, 1.0, (n, k)), rng.uniform(0.55, 1.0, (n, k)))
    grey = rng.uniform(ARM_GREY_LOW, ARM_GREY_HIGH, n)
    tint = rng.uniform(-0.05, 0.05, (n, 3))
    return _Scene(
        size=size,
        ee0=lo + rng.random((n, 2)) * (hi - lo),
        z0=rng.uniform(0.5, 1.0, n),
        grip0=np.where(rng.random(n) < 0.5, 1.0, -1.0),
        speed=rng.uniform(2.0, 4.0, n) * s,
        arm_gain=rng.uniform(0.85, 1.1, n),
        slip=rng.uniform(0.0, 0.4, n) * s,
        obj_pos0=obj_pos,
        obj_r=obj_r,
        obj_active=active,
        obj_square=rng.random((n, k)) < 0.5,
        obj_angle=rng.uniform(0, np.pi / 2, (n, k)),
        obj_color=obj_color,
        obj_gain=rng.uniform(0.0, 0.9, (n, k)),
        obj_decay=rng.uniform(0.3, 0.85, (n, k)),
        obj_spin=rng.uniform(0.0, 0.5, (n, k)),
        arm_base_x=rng.uniform(0.35, 0.65, n) * size,
        arm_color=np.clip(grey[:, None] + tint, 0, 1).astype(np.float32),
        body_color=np.clip(grey[:, None] * 0.75 + tint, 0, 1).astype(np.float32),
        background=_background(rng, n, size),
    )


def _separate_objects(obj: np.ndarray, r: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Push overlapping active object pairs apart, half each way."""
    obj = obj.copy()
    k = obj.shape[1]
    for i in range(k):
        for j in range(i + 1, k):
            d = obj[:, j] - obj[:, i]
            dist = _norm(d)
            overlap = np.where(active[:, i] & active[:, j], r[:, i] + r[:, j] - dist, 0.0)
            # coincident centres get an arbitrary but fixed direction
            unit = np.where(dist[:, None] > 1e-6, d / np.maximum(dist, 1e-6)[:, None], [1.0, 0.0])
            shift = unit * (0.5 * np.maximum(overlap, 0.0))[:, None]
            obj[:, i] -= shift
            obj[:, j] += shift
    return obj


def _step_objects(
    rng: np.random.Generator,
    scene: _Scene,
    obj: np.ndarray,
    vel: np.ndarray,
    pos: np.ndarray,
    move: np.ndarray,
    z: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Advance objects one frame: slide with friction, get pushed by a low gripper, stop at the rim."""
    size = scene.size
    obj = obj + vel
    vel = vel * scene.obj_decay[..., None]
    # static friction: slow slides stop for good (objects at rest also need no redrawing)
    vel = np.where((_norm(vel) < 0.05)[..., None], 0.0, vel)
    low = z < Z_CONTACT
    grip_r = GRIP_RADIUS * size / 64
    move_len = _norm(move)
    move_dir = np.where(move_len[:, None] > 1e-6, move / np.maximum(move_len, 1e-6)[:, None], [1.0, 0.0])
    spin = rng.standard_normal(scene.obj_r.shape) * scene.obj_spin
    for k in range(obj.shape[1]):
        d = obj[:, k] - pos
        dist = _norm(d)
        overlap = scene.obj_r[:, k] + grip_r - dist
        hit = low & scene.obj_active[:, k] & (overlap > 0)
        unit = np.where(dist[:, None] > 1e-6, d / np.maximum(dist, 1e-6)[:, None], move_dir)
        # a random deflection per push: the surface/contact point is not visible in cond
        push = _rotate(unit, spin[:, k]) * np.where(hit, overlap, 0.0)[:, None]
        obj[:, k] += push
        vel[:, k] += scene.obj_gain[:, k, None] * push
    obj = _separate_objects(obj, scene.obj_r, scene.obj_active)
    lo, hi = _bounds(size, scene.obj_r)
    clipped = np.clip(obj, lo[..., None], hi[..., None])
    vel = np.where(clipped != obj, 0.0, vel)  # the rim stops the slide along that axis
    return clipped, vel


def _simulate(rng: np.random.Generator, scene: _Scene, seq_len: int, actions: np.ndarray | None = None) -> _Trajectory:
    """Roll the arm and objects forward; plan actions with a waypoint controller unless given."""
    n, size = len(scene.ee0), scene.size
    s = size / 64
    k = MAX_OBJECTS
    rows = np.arange(n)
    lo, hi = _bounds(size, GRIP_RADIUS * s)
    pos, z, grip = scene.ee0.copy(), scene.z0.copy(), scene.grip0.copy()
    vel = np.zeros((n, 2))
    target, ztarget = pos.copy(), z.copy()
    timer = np.zeros(n, dtype=np.int64)
    obj, obj_vel = scene.obj_pos0.copy(), np.zeros((n, k, 2))
    out_actions = np.empty((n, seq_len, 4), dtype=np.float32)
    out_ee = np.empty((n, seq_len, 3))
    out_grip = np.empty((n, seq_len))
    out_obj = np.empty((n, seq_len, k, 2))
    for t in range(seq_len):
        out_ee[:, t, :2], out_ee[:, t, 2], out_grip[:, t], out_obj[:, t] = pos, z, grip, obj
        if actions is None:
            # new waypoint when reached or after a while; mostly straight through an object
            timer -= 1
            new = (_norm(target - pos) < 2 * s) | (timer <= 0)
            pick = np.argmax(rng.random((n, k)) + scene.obj_active, axis=1)
            aim_obj = obj[rows, pick]
            u = aim_obj - pos
            u = u / np.maximum(_norm(u), 1e-6)[:, None]
            u = _rotate(u, rng.normal(0.0, 0.35, n))
            through = aim_obj + u * (rng.uniform(6, 16, n) * s)[:, None]
            free = lo + rng.random((n, 2)) * (hi - lo)
            aim = rng.random(n) < 0.75
            cand = np.clip(np.where(aim[:, None], through, free), lo, hi)
            zcand = np.where(aim, rng.uniform(0.0, 0.15, n), rng.uniform(0.0, 1.0, n))
            target = np.where(new[:, None], cand, target)
            ztarget = np.where(new, zcand, ztarget)
            timer = np.where(new, rng.integers(6, 16, n), timer)
            # momentum makes trajectories smooth; speed cap keeps moves at a few pixels
            d = target - pos
            want = d * np.minimum(1.0, scene.speed / np.maximum(_norm(d), 1e-6))[:, None]
            vel = 0.4 * vel + 0.6 * want
            vel = np.clip(pos + vel, lo, hi) - pos
            dz = np.clip(0.35 * (ztarget - z), -0.15, 0.15)
            dz = np.clip(z + dz, 0.0, 1.0) - z
            grip = np.where(rng.random(n) < 0.08, -grip, grip)
            out_actions[:, t, :2] = vel / (ACTION_PX * s)
            out_actions[:, t, 2] = dz / ACTION_Z
            out_actions[:, t, 3] = grip
        else:
            out_actions[:, t] = actions[:, t]
            vel = actions[:, t, :2].astype(np.float64) * (ACTION_PX * s)
            dz = actions[:, t, 2].astype(np.float64) * ACTION_Z
            grip = actions[:, t, 3].astype(np.float64)
        # the arm does not move exactly as commanded: a gain error and slip noise, both hidden
        new_pos = pos + scene.arm_gain[:, None] * vel + rng.standard_normal((n, 2)) * scene.slip[:, None]
        new_pos = np.clip(new_pos, lo, hi)
        z = np.clip(z + dz, 0.0, 1.0)
        obj, obj_vel = _step_objects(rng, scene, obj, obj_vel, new_pos, new_pos - pos, z)
        pos = new_pos
    return _Trajectory(actions=out_actions, ee=out_ee, grip=out_grip, obj_pos=out_obj)


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


def _draw_objects(canvas: np.ndarray, scene: _Scene, obj: np.ndarray) -> None:
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
    canvas: np.ndarray, scene: _Scene, gx: np.ndarray, gy: np.ndarray, z: np.ndarray, rows: np.ndarray
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
    canvas: np.ndarray, scene: _Scene, gx: np.ndarray, gy: np.ndarray, z: np.ndarray, grip: np.ndarray
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
    axis /= _norm(axis)[:, None]
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


def _render_chunk(frames: np.ndarray, scene: _Scene, traj: _Trajectory, rows: slice) -> None:
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


def _render(scene: _Scene, traj: _Trajectory, chunk: int = 128) -> np.ndarray:
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


def _slice_scene(scene: _Scene, rows: slice | np.ndarray) -> _Scene:
    """The scene of a subset of sequences (index arrays give copies)."""
    fields = {f.name: getattr(scene, f.name) for f in dataclasses.fields(scene)}
    return _Scene(**{k: v if k == "size" else v[rows] for k, v in fields.items()})


def _cond(traj: _Trajectory, size: int) -> np.ndarray:
    """Assemble cond (n, T, 7) float32 from actions and realised end-effector positions."""
    ee = traj.ee.copy()
    ee[..., :2] = ee[..., :2] / (size - 1) * 2 - 1
    return np.concatenate([traj.actions, ee.astype(np.float32)], axis=-1)


def _generate(
    n: int, seed: int | Sequence[int], seq_len: int, size: int
) -> tuple[np.ndarray, np.ndarray, _Scene, _Trajectory]:
    """generate() plus the scene and trajectory behind it (for tests and debugging)."""
    if n < 1 or seq_len < 1 or size < 16:
        raise ValueError(f"pushing: need n >= 1, seq_len >= 1, size >= 16; got {n=}, {seq_len=}, {size=}")
    rng = np.random.default_rng(seed)
    scene = _sample_scene(rng, n, size)
    traj = _simulate(rng, scene, seq_len)
    return _render(scene, traj), _cond(traj, size), scene, traj


def generate(n: int, seed: int | Sequence[int], seq_len: int = 30, size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Return (frames uint8 (n, seq_len, size, size, 3), cond float32 (n, seq_len, 7)) for n sequences."""
    frames, cond, _, _ = _generate(n, seed, seq_len, size)
    return frames, cond
