"""Embedded demo dataset: classes that only motion tells apart (the `cvrl_synth` command).

Each video is a random-dot kinematogram (the stimulus of motion-perception research): a
field of small coloured dots, bright and dark on grey, moving by one of 8 optic-flow
patterns: translate left / right / up / down, rotate clockwise / counter-clockwise, zoom
in (expansion) / zoom out (contraction). The flow's parameters are drawn per video
(direction within +-`spread` of the class direction, speed, centre of rotation or
expansion), so every video moves in its own way and the class is a property of that way.
Dots live `dot_lifetime` frames and are then redrawn elsewhere with a new colour: no
pattern persists through a video, and every frame of every class has the same statistics.
A single frame carries no class information, and what two clips of one video share is
how their dots move: a model has to learn motion, which is what contrastive video
pretraining should learn. Nuisance: camera shake (every dot jitters together) and pixel
noise.

Drawing is vectorised NumPy: a dot is a separable Gaussian, so a frame is one matrix
product [H, N] x [N, W] per colour channel. Every video has its own RNG seeded by (seed,
split, index), so the set is deterministic and can be generated in parallel.
Output: mp4 files, `train.csv` / `test.csv` (path,label; paths relative to the CSV), a
`classes.txt` class list (label-index order) and `synthetic.json` (the settings).
"""

import dataclasses
import importlib
import json
import math
import os
import sys
from typing import Dict, Optional, TextIO

import numpy as np

from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.convert import pool as pool_lib
from cvrl_tf.convert import video_io

CLASSES = ('translate_left', 'translate_right', 'translate_up', 'translate_down',
           'rotate_cw', 'rotate_ccw', 'zoom_in', 'zoom_out')
SPLITS = {'train': 0, 'test': 1}
# Image directions (y points down) of the translation classes, radians.
_DIRECTIONS = {'translate_left': math.pi, 'translate_right': 0.0,
               'translate_up': -math.pi / 2, 'translate_down': math.pi / 2}
_BACKGROUND = 0.5  # grey


@dataclasses.dataclass(frozen=True)
class Config:
  """Sizes in pixels are for 64 px frames and scale with `size`."""
  size: int = 64  # frame side in pixels (square frames)
  seconds: float = 2.0
  fps: float = 25.0
  speed: float = 1.6  # translation, px/frame, +-30% per video
  spread: float = 20.0  # translation direction, +- degrees around the class direction
  spin: float = 4.0  # rotation, degrees/frame, +-30%
  zoom: float = 0.05  # expansion / contraction rate per frame, +-30%
  dots: int = 70  # dots in a frame
  dot_sigma: float = 1.2  # Gaussian dot radius, px
  dot_lifetime: int = 8  # frames a dot lives before it is redrawn elsewhere
  shake: float = 0.4  # camera jitter std, px
  noise: float = 0.03  # pixel noise std (intensity in [0, 1])

  @property
  def num_frames(self) -> int:
    return max(1, int(round(self.seconds * self.fps)))


def flow_params(rng: np.random.Generator, cfg: Config) -> Dict[str, float]:
  """The video's own motion, drawn whatever the class (one seed, same draws): factors in
  [0.7, 1.3] for speed / spin / zoom, a direction offset and the flow centre."""
  u = rng.uniform(size=6)
  return dict(speed=0.7 + 0.6 * u[0], spin=0.7 + 0.6 * u[1], zoom=0.7 + 0.6 * u[2],
              direction=math.radians(cfg.spread) * (2 * u[3] - 1),
              cx=(0.35 + 0.3 * u[4]) * cfg.size, cy=(0.35 + 0.3 * u[5]) * cfg.size)


def _flow(name: str, q: np.ndarray, dt: np.ndarray, p: Dict[str, float],
          cfg: Config) -> np.ndarray:
  """Where points q [..., 2] (x, y) are after dt [...] frames of class `name`'s flow:
  exact for these linear flows (rotation by an angle, scaling by exp(rate * dt))."""
  px, dt = cfg.size / 64.0, dt[..., None]
  if name.startswith('translate'):
    a = _DIRECTIONS[name] + p['direction']
    return q + cfg.speed * px * p['speed'] * np.array([math.cos(a), math.sin(a)]) * dt
  c = np.array([p['cx'], p['cy']])
  if name.startswith('rotate'):  # y down: a positive angle turns clockwise on screen
    w = math.radians(cfg.spin) * p['spin'] * (1.0 if name == 'rotate_cw' else -1.0)
    cos, sin, d = np.cos(w * dt), np.sin(w * dt), q - c
    return c + np.concatenate([cos * d[..., :1] - sin * d[..., 1:],
                               sin * d[..., :1] + cos * d[..., 1:]], axis=-1)
  rate = cfg.zoom * p['zoom'] * (1.0 if name == 'zoom_in' else -1.0)
  return c + (q - c) * np.exp(rate * dt)


def _dot_colours(rng: np.random.Generator, shape) -> np.ndarray:
  """[*shape, 3] offsets from the grey background: bright or dark, tinted."""
  sign = np.where(rng.random(tuple(shape) + (1,)) < 0.5, -1.0, 1.0)
  return sign * rng.uniform(0.2, 0.45, tuple(shape) + (3,))


def dot_tracks(label: int, rng: np.random.Generator, cfg: Config = Config()):
  """Positions [T, N, 2] (x, y) and colours [T, N, 3] of the video's dots.

  Each of N dot slots shows a sequence of dots, each living `dot_lifetime` frames (the
  slots out of phase, so dots are redrawn at a steady rate). A dot's position at the
  middle of its life is uniform on a square twice the frame's side, centred on it, and
  the flow carries it there from its birth and on to its death. So the dots of any
  frame have the same spatial statistics for every class: no crowding in a contraction,
  no thinning in an expansion, and dots flow in from outside the frame as well as out.
  Translated dots wrap around the square. A zoom scales a dot's neighbourhood by
  exp(rate * dt), so over a life its expected density is mean(exp(2 rate dt)) times the
  uniform one (~1.03): zoom videos use that many fewer slots (of the same draws).
  """
  n, size, name, life = cfg.num_frames, float(cfg.size), CLASSES[label], cfg.dot_lifetime
  lo, side = -0.5 * size, 2.0 * size
  slots = max(1, int(round(4 * cfg.dots * (cfg.size / 64.0)**2)))
  lives = (n + life - 1) // life + 1
  # Every draw happens whatever the class: one seed, the same dots under any motion.
  p = flow_params(rng, cfg)
  phase = rng.integers(0, life, slots)
  mid = lo + rng.uniform(0, side, (slots, lives, 2))
  colour = _dot_colours(rng, (slots, lives))
  slot = np.arange(slots)
  if name.startswith('zoom'):  # the slots that cancel the crowding (see above)
    from_mid = np.arange(life) - (life - 1) / 2.0  # a life's frames, from its middle
    crowding = np.mean(np.exp(2.0 * cfg.zoom * p['zoom'] * from_mid))
    slot = slot[:max(1, int(round(slots / crowding)))]
  clock = np.arange(n)[:, None] + phase[None, slot]  # [T, N]
  which, age = clock // life, clock % life
  positions = _flow(name, mid[slot, which], age - (life - 1) / 2.0, p, cfg)
  colours = colour[slot, which]
  if name.startswith('translate'):
    positions = lo + (positions - lo) % side
  return positions, colours


def render(label: int, rng: np.random.Generator, cfg: Config = Config()) -> np.ndarray:
  """One video of class CLASSES[label] as uint8 [T, size, size, 3]."""
  n, px = cfg.num_frames, cfg.size / 64.0
  positions, colours = dot_tracks(label, rng, cfg)
  shake = rng.normal(0, cfg.shake * px, (n + 2, 2))
  shake = (shake[:-2] + shake[1:-1] + shake[2:]) / math.sqrt(3)  # smooth, same spread
  positions = positions + shake[:, None, :]
  grid = np.arange(cfg.size) + 0.5
  inv = -0.5 / (cfg.dot_sigma * px)**2
  img = np.empty((n, cfg.size, cfg.size, 3), np.float32)
  # Frame by frame (memory stays O(N x size)), in float64: a float32 GEMM's rounding
  # depends on the BLAS thread count, which would change the uint8 bytes of the video.
  for t in range(n):
    gx = np.exp(inv * np.square(grid - positions[t, :, 0:1]))  # [N, W]
    gy = np.exp(inv * np.square(grid - positions[t, :, 1:2]))  # [N, H]
    weighted = (gx[:, :, None] * colours[t][:, None, :]).reshape(len(gx), -1)  # [N, W*3]
    img[t] = (gy.T @ weighted).reshape(cfg.size, cfg.size, 3)
  img += _BACKGROUND
  img += rng.standard_normal(img.shape[:3] + (1,), dtype=np.float32) * cfg.noise
  return (np.clip(img, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def video_rng(seed: int, split: str, index: int) -> np.random.Generator:
  return np.random.default_rng([seed, SPLITS[split], index])


def write_video(path: str, split: str, index: int, label: int, seed: int,
                cfg_dict: Dict[str, float], module: str = __name__) -> dict:
  """Renders and writes one video with `module`'s Config and render (this dataset's,
  or synthetic_hard's): a picklable unit of work for the process pool."""
  dataset = importlib.import_module(module)
  cfg = dataset.Config(**cfg_dict)
  frames = dataset.render(label, video_rng(seed, split, index), cfg)
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
  return write_dataset(output_dir, __name__, CLASSES, cfg, num_train, num_test, seed,
                       workers, log)


def write_dataset(output_dir: str, module: str, classes, cfg, num_train: int,
                  num_test: int, seed: int, workers: int, log: Optional[TextIO],
                  **meta) -> Dict[str, str]:
  """The videos of `module`'s dataset (classes in turn, `num_*` per class), the CSV
  listings, classes.txt and synthetic.json (the settings, `meta` first)."""
  if cfg.size % 2 or cfg.size < 16:
    raise ValueError(f'size must be even and >= 16, got {cfg.size}')
  jobs, rows = [], {}
  for split, per_class in (('train', num_train), ('test', num_test)):
    rows[split] = []
    for index in range(per_class * len(classes)):
      label = index % len(classes)
      rel = f'{split}/{classes[label]}/{split}_{index:05d}.mp4'
      rows[split].append(f'{rel},{classes[label]}\n')
      jobs.append(dict(path=os.path.join(output_dir, rel), split=split, index=index,
                       label=label, seed=seed, cfg_dict=dataclasses.asdict(cfg),
                       module=module))
  progress = progress_lib.Progress(len(jobs), stream=log)
  with pool_lib.OrderedPool(workers, lambda kw: {'ok': False}) as pool:
    for result, job in zip(pool.map(write_video, jobs), jobs):
      if not result['ok']:
        raise RuntimeError(f'writing {job["path"]} crashed its process')
      progress.advance()
  paths = {'classes': os.path.join(output_dir, 'classes.txt')}
  files_lib.atomic_write(paths['classes'], ''.join(f'{c}\n' for c in classes))
  for split, lines in rows.items():
    paths[split] = os.path.join(output_dir, f'{split}.csv')
    files_lib.atomic_write(paths[split], 'path,label\n' + ''.join(lines))
  meta.update(seed=seed, num_train_per_class=num_train, num_test_per_class=num_test,
              classes=list(classes), **dataclasses.asdict(cfg))
  files_lib.atomic_write(os.path.join(output_dir, 'synthetic.json'),
                         json.dumps(meta, indent=1) + '\n')
  return paths
