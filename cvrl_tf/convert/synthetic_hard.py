"""The hard embedded dataset (`cvrl_synth --dataset=hard`): a quality benchmark with headroom.

The demo set (synthetic.py) is saturated: every recipe reaches 100%. These videos keep its
core, a field of dots moving by an optic flow (which the demo's recipe learns in a few
hundred steps), and add the properties of real video that the paper's comparisons rely on
(docs/quality.md says which comparison relies on which):

- 16 classes: the demo's 8 flows (translate left / right / up / down, rotate cw / ccw,
  zoom in / out) x slow / fast. Pairs differ only in speed or only in direction;
- the class's motion happens in a window of 45-85% of the video only; before and after
  it the same dots stay in place (they still appear and fade): distant clips of a video
  may not share the motion at all;
- appearance does not give the class away: the background texture, the dots' two
  colours, distractor shapes and an occluding band are drawn from one pool per video,
  whatever the class;
- appearance drifts within a video: lighting gain and colour cast, camera pan and zoom,
  distractors entering and leaving, the occluding band sweeping across;
- camera shake and pixel noise.

Every draw happens whatever the class (same RNG -> same scene; only the motion differs),
and every video has its own RNG seeded by (seed, split, index). Dots are drawn as in
synthetic.py (separable Gaussians, float64 products); the rest is elementwise NumPy, so
the bytes do not depend on the thread count.
Output as synthetic.py: mp4 files, train.csv / test.csv, classes.txt, synthetic.json.
"""

import copy
import dataclasses
import math
import sys
from typing import Dict, Optional, TextIO, Tuple

import numpy as np

from cvrl_tf.convert import synthetic

PACES = ('slow', 'fast')
CLASSES = tuple(f'{flow}_{pace}' for flow in synthetic.CLASSES for pace in PACES)
SHAPES = ('disc', 'square', 'diamond', 'triangle', 'ring', 'cross')
SPLITS = synthetic.SPLITS


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes in pixels are for 64 px frames and scale with `size`; rates are per frame."""
  size: int = 64
  seconds: float = 3.0
  fps: float = 25.0
  # The flows: the demo's rates (synthetic.Config: 1.6 px/frame, 4 deg/frame, 0.05 per
  # frame, each +-30% per video) times `slow` or `fast`.
  slow: float = 0.55
  fast: float = 1.3
  dots: int = 70
  dot_sigma: float = 1.2
  dot_lifetime: int = 8
  visible: Tuple[float, float] = (0.75, 0.95)  # fraction of the video with the motion
  fade: float = 4.0  # frames from still to moving dots and back
  distractors: int = 1
  distractor_radius: Tuple[float, float] = (3.0, 5.0)  # px
  distractor_speed: float = 0.3  # px/frame at most
  # The background: grey (design 4). A textured, coloured one (design 3: contrast 0.015,
  # colour 0.15) is a per-video appearance both views share, which this budget's recipe
  # learns instead of the motion (docs/quality.md, section 4).
  background_contrast: float = 0.0  # grating amplitude; blobs 5x that
  background_colour: float = 0.0  # 0: the demo's grey; 1: any colour
  dot_contrast: float = 1.0  # times the demo's bright / dark dot offsets
  tint: float = 0.0  # how much of the video's palette colours the dots
  pan: float = 0.0  # camera pan, px/frame at most (design 3: 0.2)
  camera_zoom: float = 0.002  # camera zoom, log-scale per frame, +-
  # Lighting gain at the start and at the end (design 3: 0.9-1.1; a brightness both views
  # share, or one that differs between them, keeps the recipe on its plateau).
  gain: Tuple[float, float] = (1.0, 1.0)
  cast: float = 0.04  # colour cast per channel, +-, at the start and at the end
  # False: the start's gain and cast hold for the whole video (a per-video lighting, the
  # same in every clip of it); the end's are still drawn (the same RNG stream).
  lighting_drift: bool = True
  occluder_speed: Tuple[float, float] = (0.6, 1.0)  # px/frame
  occluder_width: Tuple[float, float] = (3.0, 5.0)  # px
  shake: float = 0.5  # camera jitter std, px
  noise: float = 0.03

  @property
  def num_frames(self) -> int:
    return max(1, int(round(self.seconds * self.fps)))


# ------------------------------------------------------------------------ the scene
def _colour(rng: np.random.Generator, n: int = 1) -> np.ndarray:
  return rng.uniform(0.08, 0.92, (n, 3))


def _sprite(rng: np.random.Generator, radius: Tuple[float, float]) -> dict:
  """A shape with a two-colour texture."""
  return dict(shape=int(rng.integers(len(SHAPES))), radius=float(rng.uniform(*radius)),
              texture=int(rng.integers(2)), frequency=float(rng.uniform(1.5, 3.0)),
              colours=_colour(rng, 2), angle=float(rng.uniform(0, 2 * math.pi)))


def _window(rng: np.random.Generator, n: int, lo: float, hi: float) -> Tuple[float, float]:
  length = rng.uniform(lo, hi) * n
  start = rng.uniform(0, n - length)
  return float(start), float(start + length)


def _demo_config(cfg: Config, factor: float) -> synthetic.Config:
  base = synthetic.Config()
  return synthetic.Config(size=cfg.size, seconds=cfg.seconds, fps=cfg.fps,
                          speed=base.speed * factor, spin=base.spin * factor,
                          zoom=base.zoom * factor, dots=cfg.dots, dot_sigma=cfg.dot_sigma,
                          dot_lifetime=cfg.dot_lifetime)


def scene(rng: np.random.Generator, cfg: Config = Config()) -> dict:
  """Everything about a video except its class's motion: the same draws for every class.
  The dots' own draws (synthetic.dot_tracks) come from `dot_rng`, a copy of the RNG."""
  n, px, s = cfg.num_frames, cfg.size / 64.0, float(cfg.size)
  side = 2 * cfg.size  # the background canvas, periodic
  g = np.arange(side) + 0.5
  yy, xx = np.meshgrid(g, g, indexing='ij')
  canvas = np.broadcast_to(0.5 + (_colour(rng)[0] - 0.5) * cfg.background_colour,
                           (side, side, 3)).copy()
  for _ in range(3):  # gratings with a whole number of cycles: seamless when wrapped
    kx, ky = rng.integers(-6, 7, 2)
    if kx == 0 and ky == 0:
      kx = 1
    phase = rng.uniform(0, 2 * math.pi)
    wave = np.cos(2 * math.pi * (kx * xx + ky * yy) / side + phase)
    canvas += cfg.background_contrast * wave[..., None] * rng.uniform(-1, 1, 3)
  for _ in range(6):  # blobs, wrapped
    c, r = rng.uniform(0, side, 2), rng.uniform(4, 12) * px
    dx = (xx - c[0] + side / 2) % side - side / 2
    dy = (yy - c[1] + side / 2) % side - side / 2
    blob = np.exp(-0.5 * (dx**2 + dy**2) / r**2)
    canvas += blob[..., None] * (_colour(rng)[0] - 0.5) * 5 * cfg.background_contrast
  angle = rng.uniform(0, 2 * math.pi)
  camera = dict(pan=cfg.pan * px * math.sqrt(rng.uniform()) *
                np.array([math.cos(angle), math.sin(angle)]),
                zoom=cfg.camera_zoom * rng.uniform(-1, 1),
                shake=rng.normal(0, cfg.shake * px, (n + 2, 2)))
  # The dots' two colours (offsets from the background, as the demo's), bright or dark.
  palette = _colour(rng, 2) - 0.5
  window = _window(rng, n, *cfg.visible)
  distractors = []
  for _ in range(cfg.distractors):
    d = _sprite(rng, tuple(r * px for r in cfg.distractor_radius))
    d['window'] = _window(rng, n, 0.3, 1.0)
    d['centre'] = rng.uniform(0.1, 0.9, 2) * s
    a = rng.uniform(0, 2 * math.pi)
    d['velocity'] = cfg.distractor_speed * px * rng.uniform() * np.array(
        [math.cos(a), math.sin(a)])
    distractors.append(d)
  vertical = bool(rng.integers(2))
  speed = rng.uniform(*cfg.occluder_speed) * px * (1 if rng.integers(2) else -1)
  occluder = dict(vertical=vertical, speed=speed, width=rng.uniform(*cfg.occluder_width) * px,
                  colour=_colour(rng)[0], start=rng.uniform(0, 0.5) * n)
  lighting = dict(gain=rng.uniform(*cfg.gain, 2), cast=rng.uniform(-cfg.cast, cfg.cast,
                                                                     (2, 3)))
  if not cfg.lighting_drift:
    lighting = {k: np.stack([v[0], v[0]]) for k, v in lighting.items()}
  return dict(canvas=canvas, camera=camera, palette=palette, window=window,
              distractors=distractors, occluder=occluder, lighting=lighting,
              dot_rng=copy.deepcopy(rng))


def _camera_centre(sc: dict, t, cfg: Config) -> np.ndarray:
  """World point at the screen's centre at frames t (no shake): [..., 2]."""
  return cfg.size / 2.0 + sc['camera']['pan'] * np.asarray(t, np.float64)[..., None]


def motion_weight(sc: dict, cfg: Config = Config()) -> np.ndarray:
  """[T] in [0, 1]: 1 where the class's motion is on, 0 where the dots stand still."""
  t = np.arange(cfg.num_frames, dtype=np.float64)
  t_in, t_out = sc['window']
  return np.clip((t - t_in) / cfg.fade, 0, 1) * np.clip((t_out - t) / cfg.fade, 0, 1)


def dot_field(label: int, sc: dict, cfg: Config = Config()):
  """Dots of class CLASSES[label] in world coordinates: ((moving [T, N', 2], colours
  [T, N', 3]), (still [T, N, 2], colours [T, N, 3])). Both are synthetic.dot_tracks of
  the same draws: the class's flow at its pace, and the same dots with no motion (a zoom
  uses the first N' < N slots). Colours: the demo's bright / dark offsets, tinted by the
  video's two-colour palette."""
  name = CLASSES[label]
  flow, pace = name.rsplit('_', 1)
  factor = cfg.slow if pace == 'slow' else cfg.fast
  moving, _ = synthetic.dot_tracks(synthetic.CLASSES.index(flow),
                                   copy.deepcopy(sc['dot_rng']), _demo_config(cfg, factor))
  still, colours = synthetic.dot_tracks(0, copy.deepcopy(sc['dot_rng']),
                                        _demo_config(cfg, 0.0))
  strength = np.abs(colours).sum(-1)
  tint = sc['palette'][(strength > strength.mean()).astype(int)]  # [T, N, 3]
  colours = colours * cfg.dot_contrast + cfg.tint * tint
  return (moving, colours[:, :moving.shape[1]]), (still, colours)


# ------------------------------------------------------------------------ drawing
def _shape_mask(shape: int, u: np.ndarray, v: np.ndarray, edge: float) -> np.ndarray:
  """Soft coverage in [0, 1] of SHAPES[shape] in unit object coordinates (u, v)."""
  name = SHAPES[shape]
  if name == 'disc':
    d = np.sqrt(u * u + v * v) - 1.0
  elif name == 'square':
    d = np.maximum(np.abs(u), np.abs(v)) - 0.8
  elif name == 'diamond':
    d = (np.abs(u) + np.abs(v)) / math.sqrt(2) - 0.8
  elif name == 'triangle':  # pointing up in object coordinates
    d = np.maximum(np.maximum(-v - 0.5, 0.866 * u + 0.5 * v - 0.5),
                   -0.866 * u + 0.5 * v - 0.5) * 1.3
  elif name == 'ring':
    d = np.abs(np.sqrt(u * u + v * v) - 0.7) - 0.3
  else:  # cross
    d = np.maximum(np.minimum(np.abs(u), np.abs(v)) - 0.35,
                   np.maximum(np.abs(u), np.abs(v)) - 1.0)
  return np.clip(0.5 - d / edge, 0.0, 1.0)


def _draw_sprite(img: np.ndarray, wx: np.ndarray, wy: np.ndarray, sprite: dict,
                 centre: np.ndarray, radius: float, angle: float, opacity: float) -> None:
  """Composites one sprite (in place) onto img [H, W, 3] whose pixels sit at world
  coordinates (wx, wy)."""
  if opacity <= 0:
    return
  cos, sin = math.cos(angle), math.sin(angle)
  dx, dy = wx - centre[0], wy - centre[1]
  u = (cos * dx + sin * dy) / radius
  v = (-sin * dx + cos * dy) / radius
  mask = _shape_mask(sprite['shape'], u, v, 1.2 / radius) * opacity
  f = sprite['frequency'] * math.pi
  if sprite['texture'] == 0:  # stripes
    pattern = np.cos(f * u)
  else:  # checks
    pattern = np.cos(f * u) * np.cos(f * v)
  mix = np.clip(0.5 + 2.0 * pattern, 0.0, 1.0)[..., None]
  c0, c1 = sprite['colours']
  colour = mix * c0 + (1 - mix) * c1
  img *= 1 - mask[..., None]
  img += mask[..., None] * colour


def _bilinear(canvas: np.ndarray, wx: np.ndarray, wy: np.ndarray) -> np.ndarray:
  """canvas [S, S, 3] sampled at (wx, wy), wrapping around."""
  side = canvas.shape[0]
  x0, y0 = np.floor(wx - 0.5), np.floor(wy - 0.5)
  fx, fy = (wx - 0.5 - x0)[..., None], (wy - 0.5 - y0)[..., None]
  x0, y0 = x0.astype(np.int64) % side, y0.astype(np.int64) % side
  x1, y1 = (x0 + 1) % side, (y0 + 1) % side
  top = canvas[y0, x0] * (1 - fx) + canvas[y0, x1] * fx
  bottom = canvas[y1, x0] * (1 - fx) + canvas[y1, x1] * fx
  return top * (1 - fy) + bottom * fy


def _draw_dots(img: np.ndarray, positions: np.ndarray, colours: np.ndarray, weight: float,
               sigma: float) -> None:
  """Adds Gaussian dots at screen positions [N, 2] (x, y) with colours [N, 3] x weight:
  one [H, N] x [N, W*3] product in float64 (as synthetic.render)."""
  size = img.shape[0]
  inside = np.all((positions > -4 * sigma) & (positions < size + 4 * sigma), axis=1)
  positions, colours = positions[inside], colours[inside]  # the others add < 1e-3
  grid = np.arange(size) + 0.5
  inv = -0.5 / sigma**2
  gx = np.exp(inv * np.square(grid - positions[:, 0:1]))  # [N, W]
  gy = np.exp(inv * np.square(grid - positions[:, 1:2]))  # [N, H]
  weighted = (gx[:, :, None] * (weight * colours)[:, None, :]).reshape(len(gx), -1)
  img += (gy.T @ weighted).reshape(size, size, 3)


def render(label: int, rng: np.random.Generator, cfg: Config = Config(),
           sc: Optional[dict] = None) -> np.ndarray:
  """One video of class CLASSES[label] as uint8 [T, size, size, 3]."""
  n, size, px = cfg.num_frames, cfg.size, cfg.size / 64.0
  sc = scene(rng, cfg) if sc is None else sc
  noise = rng.standard_normal((n, size, size, 1)).astype(np.float32) * cfg.noise
  moving, still = dot_field(label, sc, cfg)
  weight = motion_weight(sc, cfg)
  cam = sc['camera']
  shake = cam['shake']
  shake = (shake[:-2] + shake[1:-1] + shake[2:]) / math.sqrt(3)
  grid = np.arange(size) + 0.5 - size / 2.0
  sy, sx = np.meshgrid(grid, grid, indexing='ij')
  light = sc['lighting']
  out = np.empty((n, size, size, 3), np.uint8)
  for t in range(n):
    zoom = math.exp(cam['zoom'] * t)
    centre = _camera_centre(sc, t, cfg) + shake[t]
    wx, wy = centre[0] + sx / zoom, centre[1] + sy / zoom
    # The canvas is drawn with the frame at its middle at t = 0.
    img = _bilinear(sc['canvas'], wx + size / 2.0, wy + size / 2.0).astype(np.float64)
    # Dots: world -> screen (the camera moves them too), the moving and the still set
    # cross-faded by the motion weight.
    for (points, colours), w in ((moving, weight[t]), (still, 1.0 - weight[t])):
      if w > 0:
        screen = (points[t] - centre) * zoom + size / 2.0
        _draw_dots(img, screen, colours[t], w, cfg.dot_sigma * px * zoom)
    for d in sc['distractors']:
      t_in, t_out = d['window']
      alpha = min(max((t - t_in) / cfg.fade, 0), 1) * min(max((t_out - t) / cfg.fade, 0), 1)
      middle = 0.5 * (t_in + t_out)
      where = d['centre'] + d['velocity'] * (t - middle) + (_camera_centre(
          sc, middle, cfg) - size / 2.0)
      _draw_sprite(img, wx, wy, d, where, d['radius'], d['angle'], alpha)
    occ = sc['occluder']  # in screen coordinates, in front of everything
    edge = (t - occ['start']) * abs(occ['speed']) - occ['width']
    coord = sx if occ['vertical'] else sy
    coord = coord + size / 2.0 if occ['speed'] > 0 else size / 2.0 - coord
    band = np.clip(0.5 + np.minimum(coord - edge, edge + occ['width'] - coord), 0, 1)
    img = img * (1 - band[..., None]) + band[..., None] * occ['colour']
    frac = t / max(n - 1, 1)
    gain = light['gain'][0] + (light['gain'][1] - light['gain'][0]) * frac
    cast = 1.0 + light['cast'][0] + (light['cast'][1] - light['cast'][0]) * frac
    img = img * (gain * cast) + noise[t]
    out[t] = (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)
  return out


# ------------------------------------------------------------------------ files
def generate(output_dir: str, num_train: int = 16, num_test: int = 8, seed: int = 0,
             cfg: Config = Config(), workers: int = 0,
             log: Optional[TextIO] = sys.stderr) -> Dict[str, str]:
  """Writes the dataset (synthetic.write_dataset with this module's render); counts are
  videos per class. The worker pool limits each worker's BLAS threads (convert/pool.py)."""
  return synthetic.write_dataset(output_dir, __name__, CLASSES, cfg, num_train, num_test,
                                 seed, workers, log, dataset='hard')
