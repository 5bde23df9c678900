"""Acquisition geometries: which ray reaches each pixel, and where a 3-D point lands in the image.

World frame = DICOM patient frame (LPS, mm) of the simulated scanner. Pixel coordinates are continuous SCOORD
(``inference.types``): the centre of pixel (row r, column c) is (X, Y) = (c + 0.5, r + 0.5).

* ``FanBeamLocalizer``: CT localizer. The tube and detector stay at one gantry angle while the table moves along
  z; each image row is a fan projection of one transverse slice (rays diverge in x-y only, parallel along z).
  Column positions are defined at the isocenter plane: a point at depth d from the isocenter toward the source
  is magnified by SOD / (SOD - d). Frontal images: columns -> +x (patient left), rows -> -z. Lateral images:
  columns -> +y (posterior), rows -> -z.
* ``ConeBeamRadiograph``: DX. Point source, flat detector; columns -> +x, rows -> -z on the detector.
* ``Orthographic``: parallel rays (truth extents and water-equivalent areas, not rendered images).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from inference.simulator.raycast import Rays

Array = np.ndarray


@dataclass(frozen=True)
class Placement:
    """Body frame -> world frame: ``world = A @ body + t`` (A = x-shear(z) @ rotation about z)."""

    a: tuple[tuple[float, ...], ...]
    t: tuple[float, float, float]

    @classmethod
    def make(cls, roll_rad: float, yaw_shear: float, anchor_body: np.ndarray, anchor_world: np.ndarray) -> Placement:
        c, s = np.cos(roll_rad), np.sin(roll_rad)
        rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        sh = np.array([[1.0, 0.0, yaw_shear], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
        a = sh @ rz
        t = np.asarray(anchor_world, float) - a @ np.asarray(anchor_body, float)
        return cls(tuple(tuple(float(v) for v in row) for row in a), (float(t[0]), float(t[1]), float(t[2])))

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.a, float)

    def to_world(self, pts: np.ndarray) -> np.ndarray:
        return pts @ self.matrix.T + np.asarray(self.t)

    def to_body(self, rays: Rays) -> Rays:
        ai = np.linalg.inv(self.matrix)
        t = self.t
        o = [rays.o[i] - t[i] for i in range(3)]
        ob = tuple(ai[i, 0] * o[0] + ai[i, 1] * o[1] + ai[i, 2] * o[2] for i in range(3))
        db = tuple(ai[i, 0] * rays.d[0] + ai[i, 1] * rays.d[1] + ai[i, 2] * rays.d[2] for i in range(3))
        return Rays(ob, db)


class Geometry:
    rows: int
    cols: int

    def rays(self, x: Array, y: Array) -> Rays:
        """World rays through continuous pixel positions (X, Y) (broadcastable arrays)."""
        raise NotImplementedError

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Continuous pixel (X, Y) of world points (N, 3)."""
        raise NotImplementedError

    def grid(self) -> Rays:
        xs = (np.arange(self.cols, dtype=float) + 0.5)[None, :]
        ys = (np.arange(self.rows, dtype=float) + 0.5)[:, None]
        return self.rays(xs, ys)


@dataclass(frozen=True)
class FanBeamLocalizer(Geometry):
    """``view``: 'AP' (source anterior, -y), 'PA' (source posterior), 'LAT_R' (source at the patient's right,
    -x) or 'LAT_L'. ``iso`` = (x, y) of the isocenter (mm). ``first`` = world position of the centre of the first
    pixel (Image Position (Patient)); ``spacing`` = (row spacing along z, column spacing at the isocenter plane)."""

    view: str
    sod: float
    sid: float
    iso: tuple[float, float]
    first: tuple[float, float, float]
    spacing: tuple[float, float]
    rows: int
    cols: int

    @property
    def frontal(self) -> bool:
        return self.view in ("AP", "PA")

    @property
    def source_xy(self) -> tuple[float, float]:
        xi, yi = self.iso
        return {
            "AP": (xi, yi - self.sod),
            "PA": (xi, yi + self.sod),
            "LAT_R": (xi - self.sod, yi),
            "LAT_L": (xi + self.sod, yi),
        }[self.view]

    def rays(self, x: Array, y: Array) -> Rays:
        dz, du = self.spacing
        xs, ys = self.source_xy
        z = self.first[2] - (np.asarray(y, float) - 0.5) * dz
        if self.frontal:
            u = self.first[0] + (np.asarray(x, float) - 0.5) * du
            d = (u - xs, np.full(np.shape(u), self.iso[1] - ys), np.zeros(np.shape(u)))
        else:
            v = self.first[1] + (np.asarray(x, float) - 0.5) * du
            d = (np.full(np.shape(v), self.iso[0] - xs), v - ys, np.zeros(np.shape(v)))
        o = (np.full(np.shape(z), xs), np.full(np.shape(z), ys), z)
        return Rays(o, d)

    def magnification(self, depth_toward_source: np.ndarray | float) -> np.ndarray | float:
        """SOD / (SOD - d) for a point d mm from the isocenter plane toward the source."""
        return self.sod / (self.sod - np.asarray(depth_toward_source))

    def depth_toward_source(self, pts: np.ndarray) -> np.ndarray:
        xi, yi = self.iso
        return {
            "AP": yi - pts[:, 1],
            "PA": pts[:, 1] - yi,
            "LAT_R": xi - pts[:, 0],
            "LAT_L": pts[:, 0] - xi,
        }[self.view]

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pts = np.atleast_2d(np.asarray(pts, float))
        dz, du = self.spacing
        m = self.magnification(self.depth_toward_source(pts))
        if self.frontal:
            u = self.iso[0] + (pts[:, 0] - self.iso[0]) * m
            x = (u - self.first[0]) / du + 0.5
        else:
            v = self.iso[1] + (pts[:, 1] - self.iso[1]) * m
            x = (v - self.first[1]) / du + 0.5
        y = (self.first[2] - pts[:, 2]) / dz + 0.5
        return x, y


@dataclass(frozen=True)
class ConeBeamRadiograph(Geometry):
    """Point source on the y axis at distance ``sod`` from the world origin (the centre of the object plane);
    detector plane at distance ``sid`` from the source, perpendicular to y. ``view`` 'PA' (source posterior, +y)
    or 'AP'. ``pixel`` = imager pixel spacing (mm, at the detector); the central ray hits the detector centre."""

    view: str
    sod: float
    sid: float
    pixel: float
    rows: int
    cols: int

    @property
    def sign(self) -> float:
        return 1.0 if self.view == "PA" else -1.0

    @property
    def source(self) -> tuple[float, float, float]:
        return (0.0, self.sign * self.sod, 0.0)

    @property
    def detector_y(self) -> float:
        return -self.sign * (self.sid - self.sod)

    def rays(self, x: Array, y: Array) -> Rays:
        xd = (np.asarray(x, float) - self.cols / 2.0) * self.pixel
        zd = (self.rows / 2.0 - np.asarray(y, float)) * self.pixel
        xd, zd = np.broadcast_arrays(xd, zd)
        s = self.source
        d = (xd - s[0], np.full(xd.shape, self.detector_y - s[1]), zd - s[2])
        o = tuple(np.full((1, 1), v) for v in s)
        return Rays(o, d)  # type: ignore[arg-type]

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pts = np.atleast_2d(np.asarray(pts, float))
        s = self.source
        k = (self.detector_y - s[1]) / (pts[:, 1] - s[1])
        xd = s[0] + (pts[:, 0] - s[0]) * k
        zd = s[2] + (pts[:, 2] - s[2]) * k
        return xd / self.pixel + self.cols / 2.0, self.rows / 2.0 - zd / self.pixel


@dataclass(frozen=True)
class Orthographic(Geometry):
    """Parallel rays along +y (``axis='y'``: image X -> world x) or along +x (``axis='x'``: X -> world y);
    rows -> -z. ``first`` = (u, z) of the first pixel centre; ``spacing`` mm (square)."""

    axis: str
    first: tuple[float, float]
    spacing: float
    rows: int
    cols: int

    def rays(self, x: Array, y: Array) -> Rays:
        u = self.first[0] + (np.asarray(x, float) - 0.5) * self.spacing
        z = self.first[1] - (np.asarray(y, float) - 0.5) * self.spacing
        u, z = np.broadcast_arrays(u, z)
        far = np.full(u.shape, -5000.0)
        zero = np.zeros((1, 1))
        one = np.ones((1, 1))
        if self.axis == "y":
            return Rays((u, far, z), (zero, one, zero))
        return Rays((far, u, z), (one, zero, zero))

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pts = np.atleast_2d(np.asarray(pts, float))
        u = pts[:, 0] if self.axis == "y" else pts[:, 1]
        return (u - self.first[0]) / self.spacing + 0.5, (self.first[1] - pts[:, 2]) / self.spacing + 0.5


@dataclass(frozen=True)
class OrthoSlices(Geometry):
    """Parallel rays along +y through chosen transverse slices: row i is the slice at ``z_values[i]``
    (descending), column X -> world x = first_x + (X - 0.5) * spacing. For water-equivalent areas."""

    first_x: float
    spacing: float
    z_values: tuple[float, ...]
    cols: int

    @property
    def rows(self) -> int:  # type: ignore[override]
        return len(self.z_values)

    def _z(self, y: Array) -> Array:
        zs = np.asarray(self.z_values, float)
        return np.interp(np.asarray(y, float) - 0.5, np.arange(len(zs), dtype=float), zs)

    def rays(self, x: Array, y: Array) -> Rays:
        u = self.first_x + (np.asarray(x, float) - 0.5) * self.spacing
        u, z = np.broadcast_arrays(u, self._z(y))
        zero = np.zeros((1, 1))
        return Rays((u, np.full(u.shape, -5000.0), z), (zero, np.ones((1, 1)), zero))

    def project(self, pts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        pts = np.atleast_2d(np.asarray(pts, float))
        zs = np.asarray(self.z_values, float)
        y = np.interp(-pts[:, 2], -zs, np.arange(len(zs), dtype=float)) + 0.5
        y = np.where(pts[:, 2] > zs[0], -1.0, np.where(pts[:, 2] < zs[-1], len(zs) + 1.0, y))
        return (pts[:, 0] - self.first_x) / self.spacing + 0.5, y
