"""Embedded demo dataset: classes that only motion tells apart (the `cvrl_synth` command).

Each video shows a large textured object doing one of 8 motions (translate left / right /
up / down, rotate clockwise / counter-clockwise, zoom in / out), cut into shots of 8-16
frames. The motion and its speed are drawn once per video; at every cut the scene is
drawn anew: background, object shape, colours, texture, position, angle, size and
distractors, from the same distributions for every class. So a single frame carries no
class information, and what two clips of one video have in common is only how things
move: a model has to learn motion, which is what contrastive video pretraining should
learn. (With one shot per video, `shot_max=0`, instance discrimination is solved by
appearance alone and says nothing about the classes.) Nuisance is real: camera shake,
brightness flicker, pixel noise and small distractor objects on random walks.

Drawing is vectorised NumPy over (time, height, width); every video has its own RNG seeded
by (seed, split, index), so the set is deterministic and can be generated in parallel.
Output: mp4 files, `train.csv` / `test.csv` (path,label; paths relative to the CSV), a
`classes.txt` class list (label-index order) and `synthetic.json` (the settings).
"""

import dataclasses
import json
import math
import os
import sys
from typing import Dict, Optional, TextIO

import numpy as np

from cvrl_tf import tool_flags
from cvrl_tf.data import pool as pool_lib
from cvrl_tf.data import progress as progress_lib
from cvrl_tf.data import video_io

CLASSES = ('translate_left', 'translate_right', 'translate_up', 'translate_down',
           'rotate_cw', 'rotate_ccw', 'zoom_in', 'zoom_out')
SPLITS = {'train': 0, 'test': 1}
_SHAPES = ('disc', 'square', 'triangle', 'cross', 'ellipse', 'pacman')
# Object radius as a fraction of the frame side; zoom classes sweep this same range.
_SCALE_RANGE = (0.15, 0.36)


@dataclasses.dataclass(frozen=True)
class Config:
  size: int = 64  # frame side in pixels (square frames)
  seconds: float = 2.0
  fps: float = 25.0
  speed: float = 1.6  # translation, px/frame at 64 px (scaled with size), +-30%
  spin: float = 6.0  # rotation, degrees/frame, +-30%
  shake: float = 0.8  # camera jitter std in px at 64 px
  noise: float = 0.03  # pixel noise std (intensity in [0, 1])
  max_distractors: int = 3
  # Shot lengths in frames: the scene is redrawn at every cut, the motion goes on
  # (shot_max 0: the whole video is one shot).
  shot_min: int = 8
  shot_max: int = 16
  zoom_frames: float = 49.0  # frames a zoom takes to sweep the whole scale range

  @property
  def num_frames(self) -> int:
    return max(1, int(round(self.seconds * self.fps)))


def _shape_sdf(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
  """Approximate signed distance (object units, radius ~1) to the shape's edge."""
  if shape == 'square':
    return np.maximum(np.abs(u), np.abs(v)) - 0.8
  if shape == 'triangle':  # three half-planes, normals at 90, 210 and 330 degrees
    c = math.cos(math.radians(30))
    return np.maximum(np.maximum(v, -0.5 * v + c * u), -0.5 * v - c * u) - 0.55
  if shape == 'cross':
    au, av = np.abs(u), np.abs(v)
    return np.minimum(np.maximum(au - 1.0, av - 0.38), np.maximum(au - 0.38, av - 1.0))
  if shape == 'ellipse':
    return (np.sqrt(u * u + (v * (1 / 0.55))**2) - 1.0) * 0.55
  r = np.sqrt(u * u + v * v) - 1.0
  if shape == 'disc':
    return r
  # pacman: a disc with a 70-degree wedge cut out
  wedge = np.abs(v) < u * math.tan(math.radians(35))
  return np.where(wedge, np.maximum(r, 0.2), r)


def _colour(rng, avoid: Optional[np.ndarray] = None, min_dist: float = 0.45) -> np.ndarray:
  """A random float32 RGB colour in [0, 1], away from `avoid` so objects stand out."""
  for _ in range(100):
    c = rng.uniform(0.0, 1.0, 3).astype(np.float32)
    if avoid is None or np.linalg.norm(c - avoid) >= min_dist:
      return c
  return 1.0 - avoid


def _background(rng, x, y, size):
  """Static scene in world coordinates: a colour ramp plus two random gratings.

  x is [T, 1, W] and y is [T, H, 1]: every layer is separable (no per-pixel sin of a
  sum), then the layers are mixed into RGB.
  """
  base, other = rng.uniform(0.15, 0.85, 3), rng.uniform(0.15, 0.85, 3)
  a = rng.uniform(0, 2 * math.pi)
  ramp = np.clip(x * (math.cos(a) / (2 * size)) + (y * (math.sin(a) / (2 * size)) + 0.5),
                 0, 1)
  layers, colours = [ramp], [(other - base) * 0.6]
  for _ in range(2):
    a, period = rng.uniform(0, math.pi), rng.uniform(0.3, 1.0) * size
    k, phase = 2 * math.pi / period, rng.uniform(0, 2 * math.pi)
    ax, ay = x * (k * math.cos(a)), y * (k * math.sin(a)) + phase
    layers.append(np.sin(ax) * np.cos(ay) + np.cos(ax) * np.sin(ay))  # sin(ax + ay)
    colours.append(rng.uniform(-0.12, 0.12, 3))
  img = _rgb(base) + sum(layer * _rgb(c) for layer, c in zip(layers, colours))
  return img, base.astype(np.float32)


def _wrap(d: np.ndarray, period: float) -> np.ndarray:
  """Offsets on a torus: an object leaving one side re-enters on the other."""
  return (d + period / 2) % period - period / 2


def _rgb(colour) -> np.ndarray:
  """An RGB triple shaped [3, 1, 1, 1] to broadcast over channel-first [3, T, H, W]."""
  return np.asarray(colour, np.float32).reshape(3, 1, 1, 1)


def _col(values) -> np.ndarray:
  """Per-frame scalars as a float32 [T, 1, 1] column for broadcasting over pixels."""
  return np.asarray(values, np.float32)[:, None, None]


def _shots(rng: np.random.Generator, n: int, cfg: Config):
  """(first, end) frame ranges of the shots: lengths uniform in [shot_min, shot_max]."""
  if cfg.shot_max <= 0:
    return [(0, n)]
  bounds, t = [], 0
  while t < n:
    length = int(rng.integers(cfg.shot_min, cfg.shot_max + 1))
    bounds.append((t, min(n, t + length)))
    t += length
  return bounds


def render(label: int, rng: np.random.Generator, cfg: Config = Config()) -> np.ndarray:
  """One video of class CLASSES[label] as uint8 [T, size, size, 3].

  The video is a sequence of shots: the motion (class, speed, spin, zoom rate) is drawn
  once per video, everything else (scene, object, its position, distractors) anew per
  shot, so that what two clips of one video have in common is how things move.

  Drawing is channel-first [3, T, H, W] float32 (broadcasting an RGB triple along a last
  axis of 3 is 10x slower in NumPy), and scalars stay Python floats, which do not promote
  arrays to float64.
  """
  n, size = cfg.num_frames, float(cfg.size)
  px = size / 64.0  # motions are specified for 64 px frames
  shake = rng.normal(0, cfg.shake * px, (n + 2, 2))
  shake = (shake[:-2] + shake[1:-1] + shake[2:]) / math.sqrt(3)  # smooth, same spread
  grid = np.arange(cfg.size, dtype=np.float32) + 0.5
  x = grid[None, None, :] + _col(shake[:, 0])  # world coordinates, [T, 1, W]
  y = grid[None, :, None] + _col(shake[:, 1])  # [T, H, 1]
  # The video's motion; drawn whatever the class, so one seed gives the same shots
  # (appearance) under any of the 8 motions.
  motion = dict(zip(('speed', 'spin', 'rate'), rng.uniform(size=3)))
  img = np.concatenate(
      [_render_shot(CLASSES[label], rng, x[t0:t1], y[t0:t1], motion, cfg)
       for t0, t1 in _shots(rng, n, cfg)], axis=1)

  # Brightness flicker and (luma) sensor noise.
  flicker = 1.0 + np.convolve(rng.normal(0, 0.03, n + 4), np.ones(5) / 5, 'valid')
  img *= _col(flicker)
  img += rng.standard_normal(img.shape[1:], dtype=np.float32) * cfg.noise
  img = np.clip(img, 0.0, 1.0, out=img) * 255.0 + 0.5
  return np.ascontiguousarray(np.moveaxis(img.astype(np.uint8), 0, -1))


def _render_shot(name: str, rng: np.random.Generator, x: np.ndarray, y: np.ndarray,
                 motion: Dict[str, float], cfg: Config) -> np.ndarray:
  """One shot, float32 [3, m, size, size]: a new scene, object and distractors, moving
  by the video's motion (x, y: the shot's world coordinates, [m, 1, W] and [m, H, 1])."""
  m, size = x.shape[0], float(cfg.size)
  px = size / 64.0
  t = np.arange(m, dtype=np.float64)
  img, bg_colour = _background(rng, x, y, size)

  # Main object. Every random draw happens whatever the class.
  start_u = rng.uniform()
  lo, hi = (f * size for f in _SCALE_RANGE)
  centre = rng.uniform(0.3, 0.7, 2) * size
  angle = np.full(m, rng.uniform(0, 2 * math.pi))
  scale = np.full(m, rng.uniform(lo, hi))
  cx, cy = np.full(m, centre[0]), np.full(m, centre[1])
  if name.startswith('translate'):
    step = cfg.speed * px * (0.7 + 0.6 * motion['speed']) * t
    direction = name.split('_')[1]
    cx = cx + {'left': -step, 'right': step}.get(direction, 0.0)
    cy = cy + {'up': -step, 'down': step}.get(direction, 0.0)
  if name.startswith('rotate'):
    spin = math.radians(cfg.spin * (0.7 + 0.6 * motion['spin']))
    angle = angle + (spin if name == 'rotate_cw' else -spin) * t  # y down: + is clockwise
  if name.startswith('zoom'):
    # The scale sweeps [lo, hi] in zoom_frames frames; a shot starts anywhere it fits.
    rate = math.log(hi / lo) / cfg.zoom_frames * (0.8 + 0.2 * motion['rate'])
    start = lo + (max(lo, hi * math.exp(-rate * (m - 1))) - lo) * start_u
    scale = start * np.exp(rate * t)
    if name == 'zoom_out':
      scale = scale[::-1]
  dx, dy = _wrap(x - _col(cx), size), _wrap(y - _col(cy), size)
  cos, sin, inv = _col(np.cos(angle)), _col(np.sin(angle)), _col(1.0 / scale)
  u, v = (cos * dx + sin * dy) * inv, (cos * dy - sin * dx) * inv
  shape = _SHAPES[rng.integers(len(_SHAPES))]
  alpha = np.clip(0.5 - _shape_sdf(shape, u, v) * _col(scale), 0.0, 1.0)
  col_a = _colour(rng, bg_colour)
  col_b = _colour(rng, col_a, 0.35)
  phi, freq = rng.uniform(0, math.pi), rng.uniform(1.2, 2.5) * math.pi
  if rng.random() < 0.5:  # stripes
    pattern = np.sin(u * (freq * math.cos(phi)) + v * (freq * math.sin(phi)))
  else:  # checker
    pattern = np.sin(u * freq) * np.sin(v * freq)
  tex = np.clip(pattern * 3.0, -1.0, 1.0) * 0.5 + 0.5
  img += ((_rgb(col_b) + _rgb(col_a - col_b) * tex) - img) * alpha

  # Distractors: small solid blobs on damped random walks (~1 px/frame, direction keeps
  # changing), drawn over the object; merged into one layer so compositing is one pass.
  count = int(rng.integers(1, cfg.max_distractors + 1))
  palette = np.stack([_colour(rng) for _ in range(count)])
  top, cover = np.zeros(img.shape[1:], np.intp), np.zeros(img.shape[1:], np.float32)
  for k in range(count):
    kicks = rng.normal(0, 0.6 * px, (m, 2))
    vel = np.zeros((m, 2))
    for i in range(1, m):
      vel[i] = 0.85 * vel[i - 1] + kicks[i]
    pos = rng.uniform(0, size, 2) + np.cumsum(vel, axis=0)
    radius = rng.uniform(0.05, 0.09) * size
    ddx, ddy = _wrap(x - _col(pos[:, 0]), size), _wrap(y - _col(pos[:, 1]), size)
    a = np.clip(radius + 0.5 - np.sqrt(ddx * ddx + ddy * ddy), 0.0, 1.0)
    top[a > 0] = k
    np.maximum(cover, a, out=cover)
  img += (palette.T[:, top] - img) * cover
  return img


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, SPLITS[split], index])


def write_video(path: str, split: str, index: int, label: int, seed: int,
                cfg_dict: Dict[str, float]) -> dict:
  """Renders and writes one video (a picklable unit of work for the process pool)."""
  cfg = Config(**cfg_dict)
  frames = render(label, video_rng(seed, split, index), cfg)
  os.makedirs(os.path.dirname(path), exist_ok=True)
  # MPEG-4 part 2 at a fixed quantizer: x264 (PyAV 18) gave different bytes for the same
  # frames from run to run on a loaded machine, even single-threaded.
  with video_io.VideoWriter(path + '.tmp.mp4', cfg.fps, cfg.size, cfg.size,
                            codec='mpeg4') as writer:
    for frame in frames:
      writer.write(frame)
  os.replace(path + '.tmp.mp4', path)
  return {'ok': True}


def generate(output_dir: str, num_train: int = 24, num_test: int = 8, seed: int = 0,
             cfg: Config = Config(), workers: int = 0,
             log: Optional[TextIO] = sys.stderr) -> Dict[str, str]:
  """Writes the dataset; `num_train` / `num_test` are videos per class (balanced).

  Returns paths: {'train': train.csv, 'test': test.csv, 'classes': classes.txt}.
  """
  if cfg.size % 2 or cfg.size < 16:
    raise ValueError(f'size must be even and >= 16, got {cfg.size}')
  jobs, rows = [], {}
  for split, per_class in (('train', num_train), ('test', num_test)):
    rows[split] = []
    for index in range(per_class * len(CLASSES)):
      label = index % len(CLASSES)
      rel = f'{split}/{CLASSES[label]}/{split}_{index:05d}.mp4'
      rows[split].append(f'{rel},{CLASSES[label]}\n')
      jobs.append(dict(path=os.path.join(output_dir, rel), split=split, index=index,
                       label=label, seed=seed, cfg_dict=dataclasses.asdict(cfg)))
  progress = progress_lib.Progress(len(jobs), stream=log)
  with pool_lib.OrderedPool(workers, lambda kw: {'ok': False}) as pool:
    for result, job in zip(pool.map(write_video, jobs), jobs):
      if not result['ok']:
        raise RuntimeError(f'writing {job["path"]} crashed its process')
      progress.advance()
  paths = {'classes': os.path.join(output_dir, 'classes.txt')}
  _write_text(paths['classes'], ''.join(f'{c}\n' for c in CLASSES))
  for split, lines in rows.items():
    paths[split] = os.path.join(output_dir, f'{split}.csv')
    _write_text(paths[split], 'path,label\n' + ''.join(lines))
  meta = dict(seed=seed, num_train_per_class=num_train, num_test_per_class=num_test,
              classes=list(CLASSES), **dataclasses.asdict(cfg))
  _write_text(os.path.join(output_dir, 'synthetic.json'), json.dumps(meta, indent=1) + '\n')
  return paths


def _write_text(path: str, text: str):
  with open(path + '.tmp', 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(path + '.tmp', path)


_FLAGS = [  # (kind, name, default, help)
    ('string', 'output_dir', None, 'Folder for the videos, CSVs and class list.'),
    ('integer', 'num_train', 24, 'Training videos per class.'),
    ('integer', 'num_test', 8, 'Test videos per class.'),
    ('integer', 'size', 64, 'Frame side in pixels (even).'),
    ('float', 'seconds', 2.0, 'Video length in seconds.'),
    ('float', 'fps', 25.0, 'Frame rate.'),
    ('integer', 'seed', 0, 'Seed: same seed, same dataset.'),
    ('integer', 'workers', None, 'Processes (default: all cores; 0 = none).'),
]
TOOL_FLAGS = tool_flags.ToolFlags(_FLAGS)
_flag = TOOL_FLAGS.value


def main(argv):
  """absl entry point: exit 0 on success, 2 on a usage error."""
  v = vars(TOOL_FLAGS.values())
  if len(argv) > 1 or not v['output_dir']:
    print('cvrl_synth: error: usage: cvrl_synth --output_dir=DIR [--num_train=N '
          '--num_test=N --size=PX --seconds=S --fps=F --seed=S]', file=sys.stderr)
    return 2
  if (v['size'] % 2 or v['size'] < 16 or v['seconds'] <= 0 or v['fps'] <= 0
      or min(v['num_train'], v['num_test']) < 0 or (v['workers'] or 0) < 0):
    print('cvrl_synth: error: need an even --size >= 16, positive --seconds/--fps and '
          'non-negative counts', file=sys.stderr)
    return 2
  workers = pool_lib.default_workers() if v['workers'] is None else v['workers']
  cfg = Config(size=v['size'], seconds=v['seconds'], fps=v['fps'])
  paths = generate(v['output_dir'], v['num_train'], v['num_test'], v['seed'], cfg, workers,
                   log=sys.stderr)
  print(f'cvrl_synth: {len(CLASSES)} classes x ({v["num_train"]} train + {v["num_test"]} '
        f'test) videos in {v["output_dir"]}; lists: {paths["train"]}, {paths["test"]}, '
        f'classes: {paths["classes"]}', file=sys.stderr)
  return 0


if __name__ == '__main__':
  from absl import app  # pylint: disable=g-import-not-at-top
  app.run(main)
