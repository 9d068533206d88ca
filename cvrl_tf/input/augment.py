"""Spatial augmentation of clips, temporally consistent by construction.

A clip is float32 [T, H, W, 3] in [0, 1]; a batch is [B, T, H, W, 3]. Random parameters
are drawn once per clip (`draw_*` functions, stateless, explicit [2] seeds) and then
applied to every frame, so a static scene stays static. The per-frame ablation reuses the
same code by treating each frame as a clip of length 1.

Two stages, so the expensive parts can run where they are cheapest:
  geometry  random resized crop + flip: windows from `sample_crop_windows`, applied while
            decoding (`tf.image.decode_and_crop_jpeg`, see pipeline.py); the resize
            and flip either there (`resize_and_flip`) or batched in the train step
            (`resize_crops`).
  colour    jitter (p 0.8, random order of brightness / contrast / saturation / hue),
            grayscale (p 0.2), Gaussian blur, solarize: `augment_batch_colour_blur`, usable
            per clip inside tf.data or on a [B, T, H, W, 3] batch inside the train step.
`batch.finish_batch` (input/batch.py, which imports this module) runs in the train step
whatever the pipeline deferred.
"""

import dataclasses
import math
from typing import Dict, Optional, Sequence, Tuple

import tensorflow as tf

CROP_AREA_RANGE = (0.3, 1.0)
CROP_ASPECT_RANGE = (0.5, 2.0)
# Probability of each colour op, indexed by view: 0 = none, 1 and 2 = the two
# asymmetric pretraining views of CVRL / SimCLR v2 (classification uses view 1).
VIEW_PROBS = {'jitter': (0.0, 0.8, 0.8), 'grayscale': (0.0, 0.2, 0.2),
              'blur': (0.0, 1.0, 0.1), 'solarize': (0.0, 0.0, 0.2)}
BLUR_SIGMA_RANGE = (0.1, 2.0)
GRAY_WEIGHTS = (0.2989, 0.5870, 0.1140)  # Those of tf.image.rgb_to_grayscale.

Params = Dict[str, tf.Tensor]
JITTER_OPS = ('brightness', 'contrast', 'saturation', 'hue')


@dataclasses.dataclass(frozen=True)
class Augmentation:
  """The augmentation's settings, wherever it runs (tf.data or the train step).

  flip_prob: of a horizontal flip per clip; 0.0 for data whose classes are mirror
    images of each other (left / right, clockwise / counter-clockwise: the demo's set).
  colour_strength: 1.0 is CVRL / SimCLR on ImageNet; 0.5 SimCLR's CIFAR setting.
  colour_probs: overrides entries of VIEW_PROBS, e.g. {'blur': (0.0, 0.0, 0.0)} turns
    blur off.
  jitter_ops: the jitter ops drawn, a subset of JITTER_OPS; the others stay identity.
  """
  flip_prob: float = 0.5
  colour_strength: float = 1.0
  colour_probs: Optional[Dict[str, Sequence[float]]] = None
  jitter_ops: Sequence[str] = JITTER_OPS

  def __post_init__(self):
    if isinstance(self.jitter_ops, str):  # gin: ('hue') is a string, not a tuple.
      object.__setattr__(self, 'jitter_ops', (self.jitter_ops,))
    unknown = set(self.jitter_ops) - set(JITTER_OPS)
    if unknown:
      raise ValueError(f'augmentation.jitter_ops: unknown {sorted(unknown)}; '
                       f'choose from {JITTER_OPS}')


# ----------------------------------------------------------------------------- geometry
def sample_crop_windows(seed: tf.Tensor, height: tf.Tensor, width: tf.Tensor, num: int = 1,
                        area_range: Tuple[float, float] = CROP_AREA_RANGE,
                        aspect_range: Tuple[float, float] = CROP_ASPECT_RANGE,
                        max_attempts: int = 10) -> tf.Tensor:
  """Random resized crop boxes -> int32 [num, 4] as (y, x, h, w), the layout of
  `tf.image.decode_and_crop_jpeg`.

  Area fraction ~ U(area_range), aspect w/h log-uniform in aspect_range; the first of
  `max_attempts` candidates that fits the frame wins. If none fits, the largest centred
  box whose aspect is clamped into the range is used (so a box always stays in range).
  """
  s_area, s_aspect, s_y, s_x = tf.unstack(
      tf.random.experimental.stateless_split(seed, num=4))
  fh, fw = tf.cast(height, tf.float32), tf.cast(width, tf.float32)
  area = tf.random.stateless_uniform([num, max_attempts], s_area, *area_range) * fh * fw
  log_lo, log_hi = math.log(aspect_range[0]), math.log(aspect_range[1])
  aspect = tf.exp(
      tf.random.stateless_uniform([num, max_attempts], s_aspect, log_lo, log_hi))
  cand_w = tf.round(tf.sqrt(area * aspect))
  cand_h = tf.round(tf.sqrt(area / aspect))
  fits = (cand_w <= fw) & (cand_h <= fh) & (cand_w >= 1) & (cand_h >= 1)
  first = tf.argmax(tf.cast(fits, tf.int32), axis=1, output_type=tf.int32)
  pick = lambda c: tf.gather(c, first, axis=1, batch_dims=1)
  # Fallback: full frame, aspect clamped (trim the long side).
  frame_aspect = fw / fh
  fb_w = tf.where(frame_aspect > aspect_range[1], tf.round(fh * aspect_range[1]), fw)
  fb_h = tf.where(frame_aspect < aspect_range[0], tf.round(fw / aspect_range[0]), fh)
  found = tf.reduce_any(fits, axis=1)
  box_h = tf.where(found, pick(cand_h), fb_h)
  box_w = tf.where(found, pick(cand_w), fb_w)
  u_y = tf.random.stateless_uniform([num], s_y)
  u_x = tf.random.stateless_uniform([num], s_x)
  y = tf.minimum(tf.floor(u_y * (fh - box_h + 1)), fh - box_h)
  x = tf.minimum(tf.floor(u_x * (fw - box_w + 1)), fw - box_w)
  return tf.cast(tf.stack([y, x, box_h, box_w], axis=-1), tf.int32)


def sample_flips(seed: tf.Tensor, num: int = 1, prob: float = 0.5) -> tf.Tensor:
  """Horizontal flip decisions -> bool [num] (prob: Augmentation.flip_prob)."""
  return tf.random.stateless_uniform([num], seed) < prob


def resize_and_flip(frames: tf.Tensor, size: Sequence[int], flip: tf.Tensor,
                    dtype: tf.DType = tf.float32) -> tf.Tensor:
  """uint8 [T, h, w, 3] crop -> [T, size[0], size[1], 3]: float32 in [0, 1] or uint8.

  The flip is done on the small uint8 crop, before the resize makes it 4x larger.
  """
  frames = tf.cond(flip, lambda: tf.reverse(frames, axis=[2]), lambda: frames)
  frames = tf.image.resize(frames, size)
  if dtype == tf.uint8:
    return tf.cast(frames + 0.5, tf.uint8)  # Round; bilinear stays within [0, 255].
  return tf.cast(frames * (1.0 / 255.0), dtype)


def to_float(clips: tf.Tensor) -> tf.Tensor:
  """uint8 [0, 255] or float [0, 1] clips -> float32 [0, 1]."""
  if clips.dtype == tf.uint8:
    return tf.cast(clips, tf.float32) * (1.0 / 255.0)
  return tf.cast(clips, tf.float32)


def resize_short_side(frames: tf.Tensor, size: int, keep_dtype: bool = False) -> tf.Tensor:
  """[T, H, W, 3] -> [T, H', W', 3] with min(H', W') = size; skipped when already so.

  Returns float32, or the input dtype (rounded) with keep_dtype, e.g. to keep the many
  frames of a multi-view evaluation in uint8.
  """
  shape = tf.shape(frames)
  h, w = tf.cast(shape[1], tf.float32), tf.cast(shape[2], tf.float32)
  scale = float(size) / tf.minimum(h, w)
  new_hw = tf.maximum(tf.cast(tf.round(tf.stack([h * scale, w * scale])), tf.int32), size)
  dtype = frames.dtype if keep_dtype else tf.float32

  def resize():
    out = tf.image.resize(frames, new_hw)
    return tf.cast(tf.round(out), dtype) if dtype.is_integer else tf.cast(out, dtype)

  return tf.cond(tf.reduce_all(new_hw == shape[1:3]),
                 lambda: tf.cast(frames, dtype), resize)


def eval_crops(frames: tf.Tensor, size: int, num_crops: int = 3) -> tf.Tensor:
  """[T, H, W, C] -> [num_crops, T, size, size, C], deterministic.

  1 crop: centre. 3 crops: start / centre / end of the long side (left-centre-right for
  landscape frames, top-centre-bottom for portrait), centred on the short side.
  """
  if num_crops not in (1, 3):
    raise ValueError(f'num_crops must be 1 or 3, got {num_crops}')
  shape = tf.shape(frames)
  h, w = shape[1], shape[2]
  cy, cx = (h - size) // 2, (w - size) // 2
  if num_crops == 1:
    offsets = tf.stack([[cy, cx]])
  else:
    landscape = w >= h
    along = tf.where(landscape, w, h) - size
    long_offsets = tf.stack([0, along // 2, along])
    offsets = tf.where(landscape,
                       tf.stack([tf.fill([3], cy), long_offsets], axis=1),
                       tf.stack([long_offsets, tf.fill([3], cx)], axis=1))
  crops = [frames[:, offsets[i, 0]:offsets[i, 0] + size, offsets[i, 1]:offsets[i, 1] + size]
           for i in range(num_crops)]
  return tf.stack(crops)


# ------------------------------------------------------------------------ colour and blur
def draw_colour_params(seed: tf.Tensor, num, view=1,
                       settings: Augmentation = Augmentation()) -> Params:
  """One parameter set per clip, each entry with leading dim [num].

  settings: colour_strength, colour_probs and jitter_ops (see Augmentation), the same
  wherever colour is drawn, in tf.data or in the train step.
  view: int or int tensor [num], per clip: 1 or 2 selects the probabilities of that view
  (VIEW_PROBS), 0 draws identity parameters (no colour op). `probs` overrides entries
  of VIEW_PROBS (each a list indexed by view).
  Entries: jitter bool (colour jitter applied at all); jitter_order int32 [num, 4], a
  permutation of (brightness, contrast, saturation, hue); brightness, contrast,
  saturation float factors (1 = identity, in [1 - 0.8 strength, 1 + 0.8 strength]);
  hue float shift (0 = identity, |.| <= 0.2 strength); grayscale, solarize bool;
  blur_sigma float (0 = no blur).
  """
  strength, jitter_ops = settings.colour_strength, settings.jitter_ops
  table = dict(VIEW_PROBS, **(settings.colour_probs or {}))
  view = tf.broadcast_to(tf.cast(view, tf.int32), [num])
  p = {k: tf.gather(tf.constant(v, tf.float32), view) for k, v in table.items()}
  s = tf.unstack(tf.random.experimental.stateless_split(seed, num=10))
  unif = lambda i, lo=0.0, hi=1.0, shape=(num,): tf.random.stateless_uniform(
      shape, s[i], lo, hi)
  jitter = unif(0) < p['jitter']
  lo, hi = max(0.0, 1.0 - 0.8 * strength), 1.0 + 0.8 * strength
  # Every draw happens whatever jitter_ops, so the other parameters do not change.
  drawn = lambda op, values, identity: tf.where(
      jitter, values, identity) if op in jitter_ops else tf.fill([num], identity)
  factor = lambda op, i: drawn(op, unif(i, lo, hi), 1.0)
  hue_delta = 0.2 * strength
  return {
      'jitter': jitter,
      'jitter_order': tf.argsort(unif(1, shape=(num, 4)), axis=1, stable=True),
      'brightness': factor('brightness', 2),
      'contrast': factor('contrast', 3),
      'saturation': factor('saturation', 4),
      'hue': drawn('hue', unif(5, -hue_delta, hue_delta), 0.0),
      'grayscale': unif(6) < p['grayscale'],
      'solarize': unif(7) < p['solarize'],
      'blur_sigma': tf.where(unif(8) < p['blur'], unif(9, *BLUR_SIGMA_RANGE), 0.0),
  }


def adjust_brightness(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  return x * factor  # Multiplicative (SimCLR v2), not additive like tf.image's.


def adjust_contrast(x: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
  """Contrast about the per-channel mean of the *whole clip* [T, H, W, 3], so every
  frame gets the same affine map (tf.image's per-frame mean would not)."""
  mean = tf.reduce_mean(x, axis=[-4, -3, -2], keepdims=True)
  return x * factor + mean * (1.0 - factor)  # = (x - mean) * factor + mean.


def to_grayscale(x: tf.Tensor) -> tf.Tensor:
  gray = tf.tensordot(x, tf.constant(GRAY_WEIGHTS, x.dtype), axes=[[-1], [0]])
  return tf.repeat(gray[..., None], 3, axis=-1)


def solarize(x: tf.Tensor, threshold: float = 0.5) -> tf.Tensor:
  if threshold == 0.5:
    return tf.minimum(x, 1.0 - x)  # The same, in two cheap ops.
  return tf.where(x < threshold, x, 1.0 - x)


def blur_radius(size: int) -> int:
  """Kernel ~ size / 10 (radius size // 20, 2r+1 taps): 11 for 224 crops."""
  return size // 20


def gaussian_kernel(sigma: tf.Tensor, radius: int) -> tf.Tensor:
  """Normalised 1-D Gaussian, float32 [2 * radius + 1]."""
  x = tf.range(-radius, radius + 1, dtype=tf.float32)
  k = tf.exp(-tf.square(x) / (2.0 * tf.square(tf.cast(sigma, tf.float32))))
  return k / tf.reduce_sum(k)


def _blur_matrix(kernel: tf.Tensor, n: int, radius: int) -> tf.Tensor:
  """[n, n] matrix M with (M @ v) = v convolved with `kernel`, edges reflected.

  A dense matmul beats depthwise_conv2d on CPU by ~10x here and is fine on accelerators.
  """
  src = tf.range(n)[:, None] + tf.range(-radius, radius + 1)[None, :]  # [n, taps]
  src = tf.abs(src)  # Reflect at 0 ...
  src = tf.where(src > n - 1, 2 * (n - 1) - src, src)  # ... and at n - 1.
  return tf.reduce_sum(tf.one_hot(src, n) * kernel[None, :, None], axis=1)


def gaussian_blur(x: tf.Tensor, sigma: tf.Tensor, radius: int) -> tf.Tensor:
  """Separable Gaussian blur of every frame of [T, H, W, C] (static H, W, C)."""
  x = tf.convert_to_tensor(x)
  _, h, w, c = x.shape.as_list()
  radius = min(radius, h - 1, w - 1)
  if radius < 1:
    return x
  kernel = gaussian_kernel(sigma, radius)
  y = tf.reshape(tf.transpose(x, [0, 1, 3, 2]), [-1, w])  # [T * H * C, W]: one GEMM.
  y = tf.matmul(y, _blur_matrix(kernel, w, radius), transpose_b=True)
  y = tf.reshape(y, [-1, h, c * w])
  y = tf.matmul(_blur_matrix(kernel, h, radius), y)  # Broadcast over T.
  return tf.transpose(tf.reshape(y, [-1, h, c, w]), [0, 1, 3, 2])


def colour_blur_clip(clip: tf.Tensor, params: Params, radius: int) -> tf.Tensor:
  """Applies one parameter set (scalar entries) to every frame of [T, H, W, 3].

  Order as in CVRL: jitter (each op then clip to [0, 1]), grayscale, blur, solarize.
  Disabled ops are skipped with tf.cond, so a clip pays only for what it gets.
  """
  ops = [lambda x: adjust_brightness(x, params['brightness']),
         lambda x: adjust_contrast(x, params['contrast']),
         lambda x: tf.image.adjust_saturation(x, params['saturation']),
         lambda x: tf.image.adjust_hue(x, params['hue'])]

  def jitter(x):
    for i in range(4):
      x = tf.switch_case(params['jitter_order'][i], [lambda op=op: op(x) for op in ops])
      x = tf.clip_by_value(x, 0.0, 1.0)
    return x

  maybe = lambda pred, fn, x: tf.cond(pred, lambda: fn(x), lambda: x)
  clip = maybe(params['jitter'], jitter, clip)
  clip = maybe(params['grayscale'], to_grayscale, clip)
  clip = maybe(params['blur_sigma'] > 0,
               lambda x: gaussian_blur(x, params['blur_sigma'], radius), clip)
  clip = maybe(params['solarize'], solarize, clip)
  return clip


@tf.autograph.experimental.do_not_convert
def augment_batch_colour_blur(clips: tf.Tensor, view, seed: tf.Tensor,
                              per_frame: bool = False, parallel_iterations: int = 4,
                              settings: Augmentation = Augmentation()) -> tf.Tensor:
  """Colour jitter, grayscale, blur, solarize with one parameter set per clip.

  clips: [B, T, H, W, 3] float in [0, 1] or uint8 in [0, 255] (static T, H, W).
  view: 1 or 2 (VIEW_PROBS), or an int tensor [B] (per clip) or [B, T] (per frame).
  per_frame: the temporally inconsistent ablation (one parameter set per frame).
  Runs inside tf.data (B = 1) or inside a train step on an accelerator; the map over
  clips keeps each clip's cost to the ops it draws. Returns float32 [B, T, H, W, 3].
  """
  clips = to_float(clips)
  shape = tf.shape(clips)
  _, _, h, w, c = clips.shape.as_list()
  if per_frame:
    view = tf.reshape(tf.broadcast_to(view, shape[:2]), [-1])
    clips = tf.reshape(clips, [-1, 1, h, w, c])
  params = draw_colour_params(seed, tf.shape(clips)[0], view, settings)
  radius = blur_radius(h)
  out = tf.map_fn(lambda a: colour_blur_clip(a[0], a[1], radius), (clips, params),
                  fn_output_signature=tf.TensorSpec(clips.shape[1:], tf.float32),
                  parallel_iterations=parallel_iterations)
  return tf.reshape(out, shape)


# ------------------------------------------------------------- deferred to the train step
def _bilinear_taps(out_size: int, in_size: tf.Tensor, flip: Optional[tf.Tensor]):
  """Source rows (lo, hi) and weights of tf.image.resize's bilinear (half-pixel centres)
  for crops of extent in_size [N] -> int32, int32, float32, each [N, out_size]."""
  in_size = tf.cast(in_size, tf.float32)
  pos = ((tf.range(out_size, dtype=tf.float32) + 0.5)[None, :]
         * (in_size / out_size)[:, None] - 0.5)
  floor = tf.floor(pos)
  lo = tf.cast(tf.maximum(floor, 0.0), tf.int32)
  hi = tf.cast(tf.minimum(tf.math.ceil(pos), in_size[:, None] - 1.0), tf.int32)
  frac = pos - floor
  if flip is not None:  # Mirrored output = the mirrored crop resized (exact).
    rev = lambda x: tf.where(flip[:, None], tf.reverse(x, axis=[1]), x)
    lo, hi, frac = rev(lo), rev(hi), rev(frac)
  return lo, hi, frac


@tf.autograph.experimental.do_not_convert
def resize_crops(crops: tf.Tensor, crop_hw: tf.Tensor, flip: tf.Tensor,
                 size: int) -> tf.Tensor:
  """Resize + flip of top-left-aligned crops on a padded canvas, batched.

  crops: uint8 [N, T, Hc, Wc, 3], each clip's crop in [:crop_h, :crop_w];
  crop_hw: int32 [N, 2] and flip: bool [N] per clip, or [N, T, 2] and [N, T] per frame.
  Returns float32 [N, T, size, size, 3] in [0, 1], equal to tf.image.resize (bilinear)
  of each crop. Gathers and lerps only, so it suits XLA and accelerators.
  """
  crops, crop_hw, flip = (tf.convert_to_tensor(x) for x in (crops, crop_hw, flip))
  shape = tf.shape(crops)
  if crop_hw.shape.rank == 3:  # Per frame: every frame is its own clip.
    crops = tf.reshape(crops, tf.concat([[-1, 1], shape[2:]], 0))
    crop_hw, flip = tf.reshape(crop_hw, [-1, 2]), tf.reshape(flip, [-1])
  y0, y1, fy = _bilinear_taps(size, crop_hw[:, 0], None)
  x0, x1, fx = _bilinear_taps(size, crop_hw[:, 1], flip)
  rows = lambda i: to_float(tf.gather(crops, i, axis=2, batch_dims=1))  # [N, T, S, Wc, 3]
  top = rows(y0)
  out = top + (rows(y1) - top) * fy[:, None, :, None, None]
  cols = lambda i: tf.gather(out, i, axis=3, batch_dims=1)  # [N, T, S, S, 3]
  left = cols(x0)
  out = left + (cols(x1) - left) * fx[:, None, None, :, None]
  return tf.reshape(out, tf.concat([shape[:2], [size, size, 3]], 0))
