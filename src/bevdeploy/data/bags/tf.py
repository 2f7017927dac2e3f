"""The TF tree of a bag: ``/tf_static`` (fixed transforms) and ``/tf`` (timed ones, e.g. the
ego pose odom/map → base_link), chained and interpolated as ``tf2`` does.

Camera↔LiDAR extrinsics and ego motion are read from here at each sample's time, so a frame's
``camera2lidar`` includes the ego motion between the camera's and the LiDAR's capture (the
nuScenes convention, docs/reference.md#conventions). A lookup that would extrapolate beyond the
recorded transforms, or bridge a gap longer than ``MAX_GAP_NS``, is refused like ``tf2`` refuses
it; a chain that does not connect names the frames each side can reach.
"""

from __future__ import annotations

import bisect
from collections import deque
from typing import Any

import numpy as np

from bevdeploy.errors import InputError

MAX_GAP_NS = 1_000_000_000  # two /tf samples further apart than this are not interpolated


def quaternion_matrix(x: float, y: float, z: float, w: float) -> np.ndarray:
    """3×3 rotation of a (normalised) quaternion in ROS's (x, y, z, w) order."""
    q = np.array([w, x, y, z], np.float64)
    norm = np.linalg.norm(q)
    if not np.isfinite(norm) or norm < 1e-9:
        raise ValueError("zero or non-finite quaternion")
    w, x, y, z = q / norm
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
                     [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
                     [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)]])


def matrix_quaternion(r: np.ndarray) -> tuple[float, float, float, float]:
    """(x, y, z, w) of a 3×3 rotation, w ≥ 0."""
    from pyquaternion import Quaternion

    q = Quaternion(matrix=np.asarray(r, np.float64), atol=1e-6)
    if q.w < 0:
        q = -q
    return float(q.x), float(q.y), float(q.z), float(q.w)


def invert_rigid(m: np.ndarray) -> np.ndarray:
    """The inverse of a rigid 4×4 transform (Rᵀ, −Rᵀt): exact, and without a general matrix
    inverse, which costs milliseconds per call on a busy machine (BLAS thread start-up)."""
    out = np.eye(4)
    out[:3, :3] = m[:3, :3].T
    out[:3, 3] = -m[:3, :3].T @ m[:3, 3]
    return out


def _slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    if np.dot(q0, q1) < 0:
        q1 = -q1
    dot = min(float(np.dot(q0, q1)), 1.0)
    if dot > 0.9995:
        q = q0 + a * (q1 - q0)
    else:
        theta = np.arccos(dot)
        q = (np.sin((1 - a) * theta) * q0 + np.sin(a * theta) * q1) / np.sin(theta)
    return q / np.linalg.norm(q)


def _frame(name: str) -> str:
    return name.lstrip("/")


class TfTree:
    """Transforms between frames. ``add`` takes a ``tf2_msgs/TFMessage``; ``lookup(target,
    source, t)`` gives T_target←source (4×4) at ``t`` ns; ``prune(t)`` forgets timed
    transforms no lookup at or after ``t`` needs (bounded memory over a long bag)."""

    def __init__(self) -> None:
        self.static: dict[tuple[str, str], np.ndarray] = {}
        self.timed: dict[tuple[str, str], deque[tuple[int, np.ndarray, np.ndarray]]] = {}
        self.latest_ns = -1  # newest timed transform seen
        # chains found, until an edge is added: a frame looks up the same few chains a dozen
        # times (each camera, each previous sweep), and the tree's shape rarely changes
        self._paths: dict[tuple[str, str], list[str]] = {}

    @property
    def frames(self) -> set[str]:
        return {f for edge in (*self.static, *self.timed) for f in edge}

    def add(self, msg: Any, *, static: bool, topic: str) -> None:
        for tr in msg.transforms:
            parent, child = _frame(tr.header.frame_id), _frame(tr.child_frame_id)
            t = tr.transform.translation
            r = tr.transform.rotation
            quat = np.array([r.x, r.y, r.z, r.w], np.float64)
            if not np.all(np.isfinite(quat)) or np.linalg.norm(quat) < 1e-9:
                raise InputError(f"transform {parent} → {child} has an invalid rotation "
                                 f"{quat.tolist()}", path=topic, field="transform.rotation")
            trans = np.array([t.x, t.y, t.z], np.float64)
            if (parent, child) not in self.static and (parent, child) not in self.timed:
                self._paths.clear()
            if static:
                m = np.eye(4)
                m[:3, :3] = quaternion_matrix(*quat)
                m[:3, 3] = trans
                self.static[(parent, child)] = m
                continue
            ns = tr.header.stamp.sec * 1_000_000_000 + tr.header.stamp.nanosec
            samples = self.timed.setdefault((parent, child), deque())
            if samples and ns <= samples[-1][0]:
                if ns == samples[-1][0]:
                    continue
                raise InputError(f"transform {parent} → {child} goes back in time ({ns} ns "
                                 f"after {samples[-1][0]} ns)", path=topic,
                                 field="header.stamp")
            samples.append((ns, trans, quat / np.linalg.norm(quat)))
            self.latest_ns = max(self.latest_ns, ns)

    def prune(self, before_ns: int) -> None:
        for samples in self.timed.values():
            while len(samples) > 2 and samples[1][0] <= before_ns:
                samples.popleft()

    def _neighbours(self) -> dict[str, set[str]]:
        graph: dict[str, set[str]] = {}
        for a, b in (*self.static, *self.timed):
            graph.setdefault(a, set()).add(b)
            graph.setdefault(b, set()).add(a)
        return graph

    def _path(self, source: str, target: str) -> list[str]:
        """Frames from ``source`` to ``target`` (both included), or [] when not connected."""
        path = self._paths.get((source, target))
        if path is None:
            path = self._paths[(source, target)] = self._search(source, target)
        return path

    def _search(self, source: str, target: str) -> list[str]:
        graph = self._neighbours()
        if source not in graph or target not in graph:
            return [source] if source == target else []
        previous: dict[str, str | None] = {source: None}
        todo = deque([source])
        while todo:
            node = todo.popleft()
            if node == target:
                path = [node]
                while previous[path[-1]] is not None:
                    path.append(previous[path[-1]])  # type: ignore[arg-type]
                return path[::-1]
            for nxt in sorted(graph[node]):
                if nxt not in previous:
                    previous[nxt] = node
                    todo.append(nxt)
        return []

    def _reachable(self, frame: str) -> list[str]:
        graph, seen, todo = self._neighbours(), {frame}, deque([frame])
        while todo:
            for nxt in graph.get(todo.popleft(), ()):
                if nxt not in seen:
                    seen.add(nxt)
                    todo.append(nxt)
        return sorted(seen)

    def _edge(self, parent: str, child: str, ns: int, topic: str) -> np.ndarray:
        """T_parent←child at ``ns``."""
        if (parent, child) in self.static:
            return self.static[(parent, child)]
        samples = self.timed[(parent, child)]
        times = [s[0] for s in samples]
        i = bisect.bisect_left(times, ns)
        if i < len(times) and times[i] == ns:
            t, q = samples[i][1], samples[i][2]
        elif i == 0 or i == len(times):
            side = "before the first" if i == 0 else "after the last"
            raise InputError(f"no transform {parent} → {child} at {ns} ns: {side} one "
                             f"(recorded {times[0]}..{times[-1]} ns; would extrapolate)",
                             path=topic, field=f"{parent}->{child}")
        else:
            (t0, p0, q0), (t1, p1, q1) = samples[i - 1], samples[i]
            if t1 - t0 > MAX_GAP_NS:
                raise InputError(f"no transform {parent} → {child} near {ns} ns: a gap of "
                                 f"{(t1 - t0) / 1e9:.2f} s in /tf", path=topic,
                                 field=f"{parent}->{child}")
            a = (ns - t0) / (t1 - t0)
            t, q = p0 + a * (p1 - p0), _slerp(q0, q1, a)
        m = np.eye(4)
        m[:3, :3] = quaternion_matrix(*q)
        m[:3, 3] = t
        return m

    def lookup(self, target: str, source: str, ns: int, *, topic: str = "/tf") -> np.ndarray:
        """T_target←source (4×4 float64) at ``ns``: maps points of ``source`` into ``target``."""
        target, source = _frame(target), _frame(source)
        path = self._path(source, target)
        if not path:
            raise InputError(f"the TF tree does not connect {source!r} to {target!r} ("
                             f"{source!r} reaches {self._reachable(source)}, {target!r} reaches "
                             f"{self._reachable(target)})", path=topic,
                             field=f"{target}->{source}")
        out = np.eye(4)
        for a, b in zip(path, path[1:]):  # walking from source towards target
            if (b, a) in self.static or (b, a) in self.timed:  # b is a's parent: T_b←a
                step = self._edge(b, a, ns, topic)
            else:
                step = invert_rigid(self._edge(a, b, ns, topic))
            out = step @ out
        return out
