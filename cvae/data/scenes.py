"""The scenes of the built-in "pushing" dataset: what is on the table, and how the arm and the objects move
(pure numpy, seeded). cvae/data/pushing.py draws them and says what the data is."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ACTION_PX = 4.0  # pixels (at size 64) per unit of dx, dy: keeps actions O(1)
ACTION_Z = 0.1  # height per unit of dz
Z_CONTACT = 0.3  # below this height the gripper touches objects
MAX_OBJECTS = 3
GRIP_RADIUS = 6.0  # collision radius of the gripper at size 64, pixels
RIM = 3.0  # tray rim width at size 64, pixels; objects and gripper stay inside it
ARM_BASE_Y = -70.0  # the arm's base sits this far above the top edge (size 64): a gentle lean
TEXTURE_NOISE = 0.0  # per-pixel noise of the table's texture (relative brightness std); v1 had 0.02
ARM_HALF_WIDTH = 3.5  # arm half-width at z = 0 (size 64), pixels; ARM_HALF_WIDTH_Z more at z = 1 (v1: 1.8 + 1.0 z)
ARM_HALF_WIDTH_Z = 1.5
ARM_GREY_LOW, ARM_GREY_HIGH = 0.15, 0.35  # a dark arm on a light table, as in BAIR (v1: 0.6-0.85)


@dataclass
class Scene:
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
class Trajectory:
    """The simulated states of every frame and the commands between them."""

    actions: np.ndarray  # (n, T, 4) float32 cond layout
    ee: np.ndarray  # (n, T, 3) x, y in pixels, z in [0, 1]
    grip: np.ndarray  # (n, T) grip state shown in each frame
    obj_pos: np.ndarray  # (n, T, K, 2) pixels


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Vectorised HSV -> RGB in [0, 1]; returns (..., 3) float32."""
    k = (np.array([5.0, 3.0, 1.0]) + h[..., None] * 6.0) % 6.0
    return (v[..., None] - v[..., None] * s[..., None] * np.clip(np.minimum(k, 4.0 - k), 0, 1)).astype(np.float32)


def norm(v: np.ndarray) -> np.ndarray:
    """Euclidean length over the last axis (size 2)."""
    return np.sqrt(v[..., 0] ** 2 + v[..., 1] ** 2)


def rotate(v: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Rotate 2-vectors (..., 2) by angles (...)."""
    c, s = np.cos(angle), np.sin(angle)
    return np.stack([c * v[..., 0] - s * v[..., 1], s * v[..., 0] + c * v[..., 1]], axis=-1)


def bounds(size: int, radius: np.ndarray | float) -> tuple[np.ndarray | float, np.ndarray | float]:
    """Lowest and highest centre coordinate of a disc of `radius` inside the tray rim."""
    rim = RIM * size / 64
    return rim + radius, size - 1 - rim - radius


def background(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Static textured tables: random muted colour, wood grain, optional checker, tray rim."""
    s = size / 64
    f32 = np.float32
    base = hsv_to_rgb(rng.random(n), rng.uniform(0.05, 0.4, n), rng.uniform(0.45, 0.8, n))
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


def sample_scene(rng: np.random.Generator, n: int, size: int) -> Scene:
    """Draw layouts, looks and hidden parameters for n sequences."""
    s = size / 64
    k = MAX_OBJECTS
    grip_r = GRIP_RADIUS * s
    lo, hi = bounds(size, grip_r)
    n_obj = rng.integers(1, k + 1, n)
    obj_r = rng.uniform(4, 7, (n, k)) * s
    olo, ohi = bounds(size, obj_r)
    active = np.arange(k)[None] < n_obj[:, None]
    # objects start apart (and so at rest): the first of 16 candidates clear of the earlier objects
    obj_pos = np.empty((n, k, 2))
    for j in range(k):
        cand = olo[:, j, None, None] + rng.random((n, 16, 2)) * (ohi - olo)[:, j, None, None]
        clear = np.ones((n, 16), dtype=bool)
        for i in range(j):
            gap = norm(cand - obj_pos[:, i, None]) - obj_r[:, i, None] - obj_r[:, j, None]
            clear &= (gap > 1.0) | ~active[:, i, None]
        obj_pos[:, j] = cand[np.arange(n), np.argmax(clear, axis=1)]
    hue = rng.random((n, k))
    obj_color = hsv_to_rgb(hue, rng.uniform(0.6, 1.0, (n, k)), rng.uniform(0.55, 1.0, (n, k)))
    grey = rng.uniform(ARM_GREY_LOW, ARM_GREY_HIGH, n)
    tint = rng.uniform(-0.05, 0.05, (n, 3))
    return Scene(
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
        background=background(rng, n, size),
    )


def separate_objects(obj: np.ndarray, r: np.ndarray, active: np.ndarray) -> np.ndarray:
    """Push overlapping active object pairs apart, half each way."""
    obj = obj.copy()
    k = obj.shape[1]
    for i in range(k):
        for j in range(i + 1, k):
            d = obj[:, j] - obj[:, i]
            dist = norm(d)
            overlap = np.where(active[:, i] & active[:, j], r[:, i] + r[:, j] - dist, 0.0)
            # coincident centres get an arbitrary but fixed direction
            unit = np.where(dist[:, None] > 1e-6, d / np.maximum(dist, 1e-6)[:, None], [1.0, 0.0])
            shift = unit * (0.5 * np.maximum(overlap, 0.0))[:, None]
            obj[:, i] -= shift
            obj[:, j] += shift
    return obj


def step_objects(
    rng: np.random.Generator,
    scene: Scene,
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
    vel = np.where((norm(vel) < 0.05)[..., None], 0.0, vel)
    low = z < Z_CONTACT
    grip_r = GRIP_RADIUS * size / 64
    move_len = norm(move)
    move_dir = np.where(move_len[:, None] > 1e-6, move / np.maximum(move_len, 1e-6)[:, None], [1.0, 0.0])
    spin = rng.standard_normal(scene.obj_r.shape) * scene.obj_spin
    for k in range(obj.shape[1]):
        d = obj[:, k] - pos
        dist = norm(d)
        overlap = scene.obj_r[:, k] + grip_r - dist
        hit = low & scene.obj_active[:, k] & (overlap > 0)
        unit = np.where(dist[:, None] > 1e-6, d / np.maximum(dist, 1e-6)[:, None], move_dir)
        # a random deflection per push: the surface/contact point is not visible in cond
        push = rotate(unit, spin[:, k]) * np.where(hit, overlap, 0.0)[:, None]
        obj[:, k] += push
        vel[:, k] += scene.obj_gain[:, k, None] * push
    obj = separate_objects(obj, scene.obj_r, scene.obj_active)
    lo, hi = bounds(size, scene.obj_r)
    clipped = np.clip(obj, lo[..., None], hi[..., None])
    vel = np.where(clipped != obj, 0.0, vel)  # the rim stops the slide along that axis
    return clipped, vel


def simulate(rng: np.random.Generator, scene: Scene, seq_len: int, actions: np.ndarray | None = None) -> Trajectory:
    """Roll the arm and objects forward; plan actions with a waypoint controller unless given."""
    n, size = len(scene.ee0), scene.size
    s = size / 64
    k = MAX_OBJECTS
    rows = np.arange(n)
    lo, hi = bounds(size, GRIP_RADIUS * s)
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
            new = (norm(target - pos) < 2 * s) | (timer <= 0)
            pick = np.argmax(rng.random((n, k)) + scene.obj_active, axis=1)
            aim_obj = obj[rows, pick]
            u = aim_obj - pos
            u = u / np.maximum(norm(u), 1e-6)[:, None]
            u = rotate(u, rng.normal(0.0, 0.35, n))
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
            want = d * np.minimum(1.0, scene.speed / np.maximum(norm(d), 1e-6))[:, None]
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
        obj, obj_vel = step_objects(rng, scene, obj, obj_vel, new_pos, new_pos - pos, z)
        pos = new_pos
    return Trajectory(actions=out_actions, ee=out_ee, grip=out_grip, obj_pos=out_obj)
