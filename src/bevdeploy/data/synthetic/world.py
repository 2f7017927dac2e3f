"""The simulated content of one scene: a straight road, the ego car driving along it, and actors
of the ten nuScenes detection classes placed the way they appear in city traffic.

Everything moves at constant velocity on straight lines, so a sample-to-sample finite difference
(what ``NuScenes.box_velocity`` computes) recovers the simulated velocity exactly. Positions are
generated in road coordinates (``s`` along the road, ``d`` to its left) and then mapped to the
global frame with the road's origin and heading; the ground is the plane z = 0.

Each actor has two boxes: the *annotated* box (what ``sample_annotation`` records) and the
*body* the sensors see, which is the annotated box shrunk by ``BODY_MARGIN`` on the sides and
top. Annotators draw boxes a little loose; here the margin is what guarantees that every LiDAR
return from an object lies inside its annotation despite range noise (``LIDAR.range_noise_clip``
< ``BODY_MARGIN``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from nuscenes.utils import splits

from bevdeploy.data.synthetic.rig import LIDAR, rigid, yaw_matrix
from bevdeploy.errors import ConfigError
from bevdeploy.presets import NUSCENES_CLASSES

SAMPLE_INTERVAL_US = 500_000  # key frames at 2 Hz
SWEEP_INTERVAL_US = 50_000  # LiDAR sweeps at 20 Hz
SWEEPS_PER_SAMPLE = SAMPLE_INTERVAL_US // SWEEP_INTERVAL_US
BODY_MARGIN = 0.05  # metres between an actor's body and its annotated box (sides and top)
MIN_GAP = 0.3  # metres kept between any two annotated boxes (and the ego car) at all times

# Road layout, in metres from the road's centre line (d > 0 is left of the travel direction +s).
LANE_CENTRES = (-5.25, -1.75, 1.75, 5.25)  # traffic with d < 0 drives toward +s
EGO_LANE = -1.75
PARKING = 8.0  # centre line of the parking strips
CURB = 9.25
SIDEWALK = (9.8, 12.5)
WORKSITE = (13.5, 22.0)
DRIVABLE_HALF_WIDTH = 9.0  # lanes and parking strips
REACH = 45.0  # actors are placed within this distance (along the road) of the ego's path
EGO_FOOTPRINT = (1.4, 4.6, 1.9)  # (centre ahead of the rear axle, length, width)
NEIGHBOURHOOD_HALF_WIDTH = WORKSITE[1] + 5.0  # lateral extent of everything placed
MAP_EXTRA = 60.0  # metres of road mapped beyond the placement stretch at each end
MAP_MARGIN = 20.0  # metres of empty map around the neighbourhood

assert LIDAR.range_noise_clip < BODY_MARGIN, "LiDAR returns must stay inside annotated boxes"


@dataclass(frozen=True)
class ClassPrior:
    """What an actor of one detection class looks like: nuScenes category, size statistics
    (close to the nuScenes train-set means), render colour and LiDAR reflectivity."""

    category: str
    size: tuple[float, float, float]  # mean (l, w, h), metres
    size_std: tuple[float, float, float]
    colour: tuple[int, int, int]  # RGB of a fully lit face
    reflectivity: float  # mean LiDAR intensity at normal incidence, 0..255


PRIORS: dict[str, ClassPrior] = {
    "car": ClassPrior("vehicle.car", (4.63, 1.95, 1.73), (0.35, 0.10, 0.15), (210, 30, 30), 30.0),
    "truck": ClassPrior("vehicle.truck", (6.90, 2.50, 2.90), (1.20, 0.20, 0.40), (30, 70, 210),
                        25.0),
    "construction_vehicle": ClassPrior("vehicle.construction", (6.50, 2.80, 3.20),
                                       (1.00, 0.30, 0.40), (235, 200, 0), 40.0),
    "bus": ClassPrior("vehicle.bus.rigid", (11.0, 2.95, 3.50), (1.00, 0.10, 0.20), (245, 125, 0),
                      35.0),
    "trailer": ClassPrior("vehicle.trailer", (12.0, 2.90, 3.90), (1.50, 0.10, 0.30), (0, 190, 190),
                          20.0),
    # A barrier's heading is across its long side, as in nuScenes (l ≈ 0.5, w ≈ 2.5).
    "barrier": ClassPrior("movable_object.barrier", (0.50, 2.50, 1.00), (0.05, 0.15, 0.05),
                          (200, 0, 200), 60.0),
    "motorcycle": ClassPrior("vehicle.motorcycle", (2.10, 0.80, 1.45), (0.15, 0.08, 0.10),
                             (120, 0, 200), 30.0),
    "bicycle": ClassPrior("vehicle.bicycle", (1.70, 0.60, 1.25), (0.10, 0.05, 0.10), (30, 180, 40),
                          15.0),
    "pedestrian": ClassPrior("human.pedestrian.adult", (0.73, 0.67, 1.77), (0.08, 0.07, 0.10),
                             (255, 150, 200), 12.0),
    "traffic_cone": ClassPrior("movable_object.trafficcone", (0.41, 0.41, 1.07), (0.03, 0.03, 0.08),
                               (140, 230, 0), 90.0),
}
assert tuple(PRIORS) == NUSCENES_CLASSES
GROUND_REFLECTIVITY = 6.0
RIDER_HEIGHT = 0.45  # added to a bicycle or motorcycle box when someone rides it

# (class, behaviour, relative frequency). Behaviours are implemented in ``_propose``.
_RECIPES: tuple[tuple[str, str, float], ...] = (
    ("car", "traffic", 12.0), ("car", "parked", 7.0), ("car", "stopped", 1.5),
    ("truck", "traffic", 2.0), ("truck", "parked", 1.5),
    ("bus", "traffic", 1.2), ("bus", "parked", 0.6),
    ("trailer", "parked", 1.2), ("construction_vehicle", "worksite", 1.5),
    ("barrier", "curb", 3.0), ("barrier", "worksite", 2.0),
    ("traffic_cone", "curb", 2.5), ("traffic_cone", "worksite", 2.0),
    ("motorcycle", "traffic", 1.2), ("motorcycle", "sidewalk", 1.2),
    ("bicycle", "traffic", 1.2), ("bicycle", "sidewalk", 1.5),
    ("pedestrian", "walking", 7.0), ("pedestrian", "standing", 3.0),
    ("pedestrian", "crossing", 0.8),
)
_RECIPE_P = np.array([w for _, _, w in _RECIPES]) / sum(w for _, _, w in _RECIPES)

_VEHICLES = {"car", "truck", "bus", "trailer", "construction_vehicle"}
_CYCLES = {"bicycle", "motorcycle"}


MAX_SCENES = len(splits.mini_train) + len(splits.mini_val)


def scene_names(count: int) -> list[str]:
    """Names for ``count`` scenes taken alternately from the devkit's ``mini_train`` and
    ``mini_val`` splits, so that both evaluation splits get scenes as soon as count ≥ 2."""
    train, val = list(splits.mini_train), list(splits.mini_val)
    names: list[str] = []
    while train or val:
        for pool in (train, val):
            if pool:
                names.append(pool.pop(0))
    if not 1 <= count <= MAX_SCENES:
        raise ConfigError(f"the v1.0-mini splits name {MAX_SCENES} scenes, so 1..{MAX_SCENES} "
                          f"scenes can be written; got {count}", field="scenes")
    return names[:count]


@dataclass(frozen=True)
class Road:
    """A straight road: road coordinates (s, d) ↦ global xy = origin + R(heading)·(s, d)."""

    origin: np.ndarray  # (2,)
    heading: float
    s_range: tuple[float, float]  # the stretch of road the scene uses (and its map shows)

    def to_global(self, sd: np.ndarray) -> np.ndarray:
        return self.origin + np.asarray(sd, dtype=np.float64) @ yaw_matrix(self.heading)[:2, :2].T

    def corners(self, half_width: float) -> np.ndarray:
        """(4, 2) global xy of the stretch ``s_range`` × [−half_width, half_width], in order
        around the rectangle."""
        (s0, s1), w = self.s_range, half_width
        return self.to_global(np.array([[s0, -w], [s1, -w], [s1, w], [s0, w]]))


@dataclass(frozen=True)
class EgoMotion:
    """The ego car: constant speed along its lane."""

    road: Road
    speed: float  # m/s

    def position(self, t: float) -> np.ndarray:
        return self.road.to_global(np.array([self.speed * t, EGO_LANE]))

    def pose(self, t: float) -> np.ndarray:
        """4×4 ego → global at time ``t`` (seconds from the first key frame); z = 0."""
        xy = self.position(t)
        return rigid(yaw_matrix(self.road.heading), np.array([xy[0], xy[1], 0.0]))


@dataclass(frozen=True)
class Actors:
    """K actors moving at constant velocity; everything in the global frame."""

    classes: tuple[str, ...]
    attributes: tuple[str | None, ...]  # nuScenes attribute name, None for barriers and cones
    size: np.ndarray  # (K, 3) annotated l, w, h
    yaw: np.ndarray  # (K,) heading from +x toward +y
    position0: np.ndarray  # (K, 2) centre xy at t = 0
    velocity: np.ndarray  # (K, 2) m/s
    colour: np.ndarray  # (K, 3) RGB of a fully lit face, 0..255
    reflectivity: np.ndarray  # (K,) mean LiDAR intensity

    def __len__(self) -> int:
        return len(self.classes)

    def boxes(self, t: float) -> np.ndarray:
        """(K, 9) annotated boxes ``[x, y, z, l, w, h, yaw, vx, vy]`` at time ``t`` (z = centre)."""
        out = np.empty((len(self), 9))
        out[:, 0:2] = self.position0 + self.velocity * t
        out[:, 2] = self.size[:, 2] / 2
        out[:, 3:6] = self.size
        out[:, 6] = self.yaw
        out[:, 7:9] = self.velocity
        return out

    def bodies(self, t: float) -> np.ndarray:
        """(K, 7) ``[x, y, z, l, w, h, yaw]`` of what the sensors see: the annotated box shrunk
        by ``BODY_MARGIN`` on every side and on top, still standing on the ground."""
        b = self.boxes(t)[:, :7]
        b[:, 3:5] -= 2 * BODY_MARGIN
        b[:, 5] -= BODY_MARGIN
        b[:, 2] = b[:, 5] / 2
        return b


@dataclass(frozen=True)
class SceneSim:
    """One simulated scene; times are seconds from its first key frame."""

    index: int
    name: str
    samples: int
    road: Road
    ego: EgoMotion
    actors: Actors
    sun: np.ndarray  # (3,) unit vector toward the light, global frame

    @property
    def key_times(self) -> np.ndarray:
        return np.arange(self.samples) * SAMPLE_INTERVAL_US * 1e-6


def _rect_axes(r: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit length and width axes (…, 2) of rectangles ``[x, y, l, w, yaw]``."""
    c, s = np.cos(r[..., 4]), np.sin(r[..., 4])
    return np.stack([c, s], -1), np.stack([-s, c], -1)


def _footprints_overlap(a: np.ndarray, b: np.ndarray, gap: float) -> np.ndarray:
    """Separating-axis test of oriented rectangles ``[x, y, l, w, yaw]`` (broadcast over the
    leading axes): True where they come closer than ``gap`` along every candidate axis."""
    axes_a, axes_b = _rect_axes(a), _rect_axes(b)

    def radius(r: np.ndarray, axes: tuple[np.ndarray, np.ndarray], axis: np.ndarray
               ) -> np.ndarray:
        """Half-extent of rectangles ``r`` projected on ``axis``."""
        return (r[..., 2] / 2 * np.abs(np.sum(axes[0] * axis, -1))
                + r[..., 3] / 2 * np.abs(np.sum(axes[1] * axis, -1)))

    d = b[..., :2] - a[..., :2]
    separated = np.zeros(np.broadcast_shapes(a.shape[:-1], b.shape[:-1]), dtype=bool)
    for axis in (*axes_a, *axes_b):
        distance = np.abs(np.sum(d * axis, -1))
        separated |= distance > radius(a, axes_a, axis) + radius(b, axes_b, axis) + gap
    return ~separated


@dataclass(frozen=True)
class _Proposal:
    """A candidate actor in road coordinates at the reference time."""

    cls: str
    d: float
    yaw: float  # relative to the road heading
    velocity: tuple[float, float]  # (along s, along d) m/s
    attribute: str | None
    size: np.ndarray  # (l, w, h)


def _sample_size(cls: str, rng: np.random.Generator) -> np.ndarray:
    prior = PRIORS[cls]
    z = np.clip(rng.standard_normal(3), -2.0, 2.0)
    return np.asarray(prior.size) + np.asarray(prior.size_std) * z


def _propose(cls: str, behaviour: str, rng: np.random.Generator) -> _Proposal:
    """Lateral position, heading, velocity and attribute for one actor doing ``behaviour``."""
    size = _sample_size(cls, rng)
    side = float(rng.choice([-1.0, 1.0]))
    if behaviour in ("traffic", "stopped"):
        d = float(rng.choice(LANE_CENTRES)) + rng.normal(0.0, 0.15)
        direction = 1.0 if d < 0 else -1.0
        top = 6.0 if cls == "bicycle" else 11.0
        speed = rng.uniform(2.0, top) if behaviour == "traffic" else 0.0
        yaw = (0.0 if direction > 0 else np.pi) + rng.normal(0.0, 0.01)
        if cls in _CYCLES:
            attribute = "cycle.with_rider"
            size[2] += RIDER_HEIGHT
        else:
            attribute = "vehicle.moving" if speed > 0 else "vehicle.stopped"
    elif behaviour == "parked":
        d = side * PARKING + rng.normal(0.0, 0.15)
        yaw = float(rng.choice([0.0, np.pi])) + rng.normal(0.0, 0.05)
        speed, attribute = 0.0, "vehicle.parked"
    elif behaviour == "worksite":
        d = side * rng.uniform(*WORKSITE)
        yaw = rng.uniform(-np.pi, np.pi)
        speed, attribute = 0.0, "vehicle.parked" if cls in _VEHICLES else None
    elif behaviour == "curb":
        # Barriers line the curb with their long side along the road; cones mark the parking
        # strip's edge.
        d = side * (CURB if cls == "barrier" else rng.uniform(PARKING - 1.0, CURB))
        yaw = side * np.pi / 2 + rng.normal(0.0, 0.05)
        speed, attribute = 0.0, None
    elif behaviour == "sidewalk":
        d = side * rng.uniform(*SIDEWALK)
        yaw = float(rng.choice([-1.0, 1.0])) * np.pi / 2 + rng.normal(0.0, 0.3)
        speed, attribute = 0.0, "cycle.without_rider"
    elif behaviour == "walking":
        d = side * rng.uniform(*SIDEWALK)
        yaw = float(rng.choice([0.0, np.pi])) + rng.normal(0.0, 0.03)
        speed, attribute = rng.uniform(0.8, 1.8), "pedestrian.moving"
    elif behaviour == "standing":
        d = side * rng.uniform(SIDEWALK[0], SIDEWALK[1] + 1.0)
        yaw = rng.uniform(-np.pi, np.pi)
        speed, attribute = 0.0, "pedestrian.standing"
    elif behaviour == "crossing":
        d = rng.uniform(-SIDEWALK[1], SIDEWALK[1])
        yaw = side * np.pi / 2
        speed, attribute = rng.uniform(1.0, 1.6), "pedestrian.moving"
    else:
        raise ValueError(f"unknown behaviour {behaviour!r}")
    # Everything that moves, moves along its heading.
    velocity = (float(speed * np.cos(yaw)), float(speed * np.sin(yaw)))
    return _Proposal(cls, float(d), float(yaw), velocity, attribute, size)


def build_scene(seed: int, index: int, name: str, samples: int) -> SceneSim:
    """Simulate scene ``index`` of the world generated from ``seed`` (deterministic)."""
    rng = np.random.default_rng([seed, index])
    heading = float(rng.uniform(-np.pi, np.pi))
    speed = float(rng.uniform(3.0, 8.0))
    duration = (samples - 1) * SAMPLE_INTERVAL_US * 1e-6
    pre_roll = (SWEEPS_PER_SAMPLE - 1) * SWEEP_INTERVAL_US * 1e-6
    # Collision checks at twice the sweep rate, from the first sweep to the last key frame.
    check_times = np.arange(-pre_roll, duration + 1e-9, SWEEP_INTERVAL_US * 0.5e-6)
    t_ref = duration / 2
    s_lo, s_hi = -REACH, speed * duration + REACH

    ego_rect = np.zeros((len(check_times), 5))
    ego_rect[:, 0] = speed * check_times + EGO_FOOTPRINT[0]
    ego_rect[:, 1] = EGO_LANE
    ego_rect[:, 2:4] = EGO_FOOTPRINT[1:]

    target = int(round(rng.integers(20, 41) * max(1.0, (s_hi - s_lo) / 110.0)))
    accepted: list[tuple[_Proposal, float]] = []  # (proposal, s at t_ref)
    tracks = np.zeros((0, len(check_times), 5))
    for _ in range(target * 40):
        if len(accepted) == target:
            break
        cls, behaviour, _ = _RECIPES[rng.choice(len(_RECIPES), p=_RECIPE_P)]
        prop = _propose(cls, behaviour, rng)
        s_ref = rng.uniform(s_lo, s_hi)
        rect = np.empty((len(check_times), 5))
        rect[:, 0] = s_ref + prop.velocity[0] * (check_times - t_ref)
        rect[:, 1] = prop.d + prop.velocity[1] * (check_times - t_ref)
        rect[:, 2:4] = prop.size[:2]
        rect[:, 4] = prop.yaw
        if _footprints_overlap(ego_rect, rect, MIN_GAP).any():
            continue
        if len(accepted) and _footprints_overlap(tracks, rect[None], MIN_GAP).any():
            continue
        accepted.append((prop, s_ref))
        tracks = np.concatenate([tracks, rect[None]])

    # Place the road so that the whole neighbourhood has global coordinates ≥ MAP_MARGIN: the
    # map mask is an image whose pixel (0, 0) is global (0, its height).
    s_range = (s_lo - MAP_EXTRA, s_hi + MAP_EXTRA)
    road = Road(origin=np.zeros(2), heading=heading, s_range=s_range)
    origin = MAP_MARGIN - road.corners(NEIGHBOURHOOD_HALF_WIDTH).min(axis=0)
    road = Road(origin=origin, heading=heading, s_range=s_range)

    rot = yaw_matrix(heading)[:2, :2]
    if accepted:
        sd_ref = np.array([[s, p.d] for p, s in accepted])
        v_sd = np.array([p.velocity for p, _ in accepted])
        position0 = road.to_global(sd_ref - v_sd * t_ref)
        velocity = v_sd @ rot.T
    else:
        position0 = velocity = np.zeros((0, 2))
    base = np.array([PRIORS[p.cls].colour for p, _ in accepted], dtype=np.float64).reshape(-1, 3)
    colour = np.clip(base * rng.uniform(0.88, 1.12, size=base.shape), 0, 255)
    actors = Actors(
        classes=tuple(p.cls for p, _ in accepted),
        attributes=tuple(p.attribute for p, _ in accepted),
        size=np.array([p.size for p, _ in accepted]).reshape(-1, 3),
        yaw=np.array([(p.yaw + heading + np.pi) % (2 * np.pi) - np.pi for p, _ in accepted]),
        position0=position0,
        velocity=velocity,
        colour=colour,
        reflectivity=np.array([PRIORS[p.cls].reflectivity for p, _ in accepted]),
    )
    sun_azimuth, sun_elevation = rng.uniform(-np.pi, np.pi), rng.uniform(0.6, 1.1)
    sun = np.array([np.cos(sun_elevation) * np.cos(sun_azimuth),
                    np.cos(sun_elevation) * np.sin(sun_azimuth), np.sin(sun_elevation)])
    return SceneSim(index=index, name=name, samples=samples, road=road,
                    ego=EgoMotion(road=road, speed=speed), actors=actors, sun=sun)


def build_world(seed: int, scenes: int, samples: int) -> list[SceneSim]:
    """All scenes of the world ``write_world`` writes for these arguments."""
    return [build_scene(seed, i, name, samples) for i, name in enumerate(scene_names(scenes))]
