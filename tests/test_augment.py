"""Spatial augmentation: ranges, temporal consistency, NumPy references for the ops."""

import colorsys

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf.input import augment

SEED = tf.constant([3, 5])


def _static_clips(num, frames=4, size=32):
  """[num, T, H, W, 3] clips whose T frames are identical (a textured still scene)."""
  rng = np.random.default_rng(0)
  still = rng.uniform(0.1, 0.9, size=(num, 1, size, size, 3)).astype(np.float32)
  return tf.constant(np.repeat(still, frames, axis=1))


def test_crop_windows_respect_ranges_and_frame():
  height, width = 120, 160
  boxes = augment.sample_crop_windows(SEED, height, width, num=3000).numpy()
  y, x, h, w = boxes.T
  assert (y >= 0).all() and (x >= 0).all()
  assert (y + h <= height).all() and (x + w <= width).all()
  area = h * w / (height * width)
  # Rounding box sides to pixels moves area / aspect by at most ~1 pixel per side.
  assert area.min() >= 0.3 - 0.02 and area.max() <= 1.0
  aspect = w / h
  assert aspect.min() >= 0.5 - 0.02 and aspect.max() <= 2.0 + 0.03
  assert area.min() < 0.35 and area.max() > 0.9  # The whole range is used.
  assert aspect.min() < 0.6 and aspect.max() > 1.8
  np.testing.assert_array_equal(
      boxes, augment.sample_crop_windows(SEED, height, width, num=3000).numpy())


def test_crop_window_fallback_keeps_aspect_in_range():
  # No 0.3-area box with aspect <= 2 fits a 10x200 strip: fall back to a centred 10x20.
  box = augment.sample_crop_windows(SEED, 10, 200, num=5).numpy()
  np.testing.assert_array_equal(box[:, 2:], [[10, 20]] * 5)
  assert ((box[:, 1] >= 0) & (box[:, 1] + 20 <= 200)).all()


def test_colour_params_probabilities_and_ranges():
  n = 4000
  for view, blur_p, sol_p in [(1, 1.0, 0.0), (2, 0.1, 0.2)]:  # CVRL's two views.
    p = {k: v.numpy() for k, v in augment.draw_colour_params(SEED, n, view).items()}
    assert abs(p['jitter'].mean() - 0.8) < 0.03
    assert abs(p['grayscale'].mean() - 0.2) < 0.03
    assert abs((p['blur_sigma'] > 0).mean() - blur_p) < 0.03
    assert abs(p['solarize'].mean() - sol_p) < 0.03
    sigma = p['blur_sigma'][p['blur_sigma'] > 0]
    assert sigma.min() >= 0.1 and sigma.max() <= 2.0
    on = p['jitter']
    for key in ('brightness', 'contrast', 'saturation'):
      assert p[key][on].min() >= 0.2 and p[key][on].max() <= 1.8
      np.testing.assert_array_equal(p[key][~on], 1.0)
    assert np.abs(p['hue'][on]).max() <= 0.2 and (p['hue'][~on] == 0).all()
    np.testing.assert_array_equal(np.sort(p['jitter_order'], axis=1), [[0, 1, 2, 3]] * n)


def test_colour_strength_and_probabilities():
  settings = augment.Augmentation(colour_strength=0.5, colour_probs={'blur': (0.0, 0.0, 0.0)})
  p = {k: v.numpy() for k, v in augment.draw_colour_params(SEED, 2000, 1, settings).items()}
  on = p['jitter']
  for key in ('brightness', 'contrast', 'saturation'):  # 1 -/+ 0.8 * 0.5
    assert p[key][on].min() >= 0.6 and p[key][on].max() <= 1.4
    assert p[key][on].min() < 0.65 and p[key][on].max() > 1.35
  assert np.abs(p['hue'][on]).max() <= 0.1
  assert (p['blur_sigma'] == 0).all()  # view 1 normally blurs every clip
  assert abs(p['grayscale'].mean() - 0.2) < 0.04  # not overridden


def test_jitter_ops_keep_the_other_draws():
  """jitter_ops=('saturation', 'hue'): brightness and contrast stay identity, and every
  other parameter is the draw of the full jitter (same seed, same values)."""
  full = {k: v.numpy() for k, v in augment.draw_colour_params(SEED, 500, 1).items()}
  some = augment.draw_colour_params(
      SEED, 500, 1, augment.Augmentation(jitter_ops=('saturation', 'hue')))
  some = {k: v.numpy() for k, v in some.items()}
  np.testing.assert_array_equal(some['brightness'], 1.0)
  np.testing.assert_array_equal(some['contrast'], 1.0)
  for key in set(full) - {'brightness', 'contrast'}:
    np.testing.assert_array_equal(some[key], full[key], err_msg=key)
  assert full['jitter'].any() and (full['brightness'][full['jitter']] != 1.0).all()
  only_hue = augment.draw_colour_params(
      SEED, 50, 1, augment.Augmentation(jitter_ops='hue'))  # gin's ('hue') is a string
  np.testing.assert_array_equal(only_hue['saturation'].numpy(), 1.0)
  assert (only_hue['hue'].numpy() != 0).any()
  with pytest.raises(ValueError, match='jitter_ops.*gamma'):
    augment.Augmentation(jitter_ops=('gamma',))


def test_flip_probability():
  assert abs(augment.sample_flips(SEED, 4000).numpy().mean() - 0.5) < 0.03
  assert not augment.sample_flips(SEED, 4000, augment.Augmentation(flip_prob=0.0).flip_prob
                                  ).numpy().any()


def test_consistent_augmentation_keeps_a_still_scene_still():
  clips = _static_clips(6)
  for view in (1, 2):
    out = augment.augment_batch_colour_blur(clips, view, SEED).numpy()
    np.testing.assert_allclose(out, np.repeat(out[:, :1], 4, axis=1), atol=1e-6)
    assert np.abs(out - clips.numpy()).max() > 0.05  # It did change the clips.


def test_per_frame_augmentation_breaks_a_still_scene():
  out = augment.augment_batch_colour_blur(_static_clips(6), 2, SEED, per_frame=True).numpy()
  frame_spread = np.abs(out - out[:, :1]).max(axis=(1, 2, 3, 4))
  assert (frame_spread > 0.02).sum() >= 5


def test_uint8_input_equals_float_input():
  clips = _static_clips(2)
  as_uint8 = tf.cast(tf.round(clips * 255.0), tf.uint8)
  np.testing.assert_allclose(
      augment.augment_batch_colour_blur(as_uint8, 1, SEED).numpy(),
      augment.augment_batch_colour_blur(tf.cast(as_uint8, tf.float32) / 255.0, 1,
                                        SEED).numpy(), atol=1e-5)


def test_view_tensor_selects_probabilities_per_clip():
  view = tf.constant([0, 1, 2] * 1000)
  p = {k: v.numpy() for k, v in augment.draw_colour_params(SEED, 3000, view).items()}
  assert not p['jitter'][0::3].any() and not p['grayscale'][0::3].any()
  assert (p['blur_sigma'][0::3] == 0).all() and (p['blur_sigma'][1::3] > 0).all()
  assert not p['solarize'][1::3].any() and p['solarize'][2::3].mean() > 0.1
  clips = _static_clips(3)
  out = augment.augment_batch_colour_blur(clips, tf.constant([0, 1, 2]), SEED).numpy()
  np.testing.assert_allclose(out[0], clips.numpy()[0], atol=1e-6)  # View 0: untouched.


def _canvas_batch(rng, num, frames, canvas, sizes):
  """Random uint8 crops of the given (h, w) sizes, top-left on a zero canvas."""
  crops = np.zeros((num, frames) + canvas + (3,), np.uint8)
  for i, (h, w) in enumerate(sizes):
    crops[i, :, :h, :w] = rng.integers(0, 256, size=(frames, h, w, 3))
  return crops


def test_resize_crops_equals_tf_image_resize_of_each_crop():
  rng = np.random.default_rng(4)
  sizes = [(20, 30), (9, 13), (40, 40), (31, 17)]  # Down- and up-sampling.
  crops = _canvas_batch(rng, 4, 2, (40, 48), sizes)
  flips = np.array([False, True, False, True])
  out = augment.resize_crops(crops, tf.constant(sizes), tf.constant(flips), 24).numpy()
  assert out.shape == (4, 2, 24, 24, 3)
  for i, (h, w) in enumerate(sizes):
    crop = crops[i, :, :h, :w]
    if flips[i]:
      crop = crop[:, :, ::-1]
    ref = tf.image.resize(crop, [24, 24]).numpy() / 255.0
    np.testing.assert_allclose(out[i], ref, atol=1e-5)


# ---------------------------------------------------------------- NumPy references
def _np_blur(img, sigma, radius):
  """Direct 2-D convolution with a normalised Gaussian, edges mirrored ('reflect')."""
  x = np.arange(-radius, radius + 1)
  k = np.exp(-x**2 / (2 * sigma**2))
  k2 = np.outer(k, k) / np.outer(k, k).sum()
  pad = np.pad(img, ((radius, radius), (radius, radius), (0, 0)), mode='reflect')
  out = np.zeros_like(img)
  for dy in range(2 * radius + 1):
    for dx in range(2 * radius + 1):
      out += k2[dy, dx] * pad[dy:dy + img.shape[0], dx:dx + img.shape[1]]
  return out


def test_ops_match_numpy_on_hand_cases():
  rng = np.random.default_rng(1)
  clip = rng.uniform(0, 1, size=(2, 12, 10, 3)).astype(np.float32)
  np.testing.assert_allclose(augment.adjust_brightness(clip, 1.5), clip * 1.5,
                             rtol=1e-6)
  mean = clip.mean(axis=(0, 1, 2))  # Clip-wide, per channel.
  np.testing.assert_allclose(augment.adjust_contrast(clip, 0.4),
                             (clip - mean) * 0.4 + mean, atol=1e-6)
  gray = clip @ np.array([0.2989, 0.5870, 0.1140], np.float32)
  np.testing.assert_allclose(augment.to_grayscale(clip), np.stack([gray] * 3, -1),
                             atol=1e-6)
  np.testing.assert_allclose(augment.solarize(clip), np.where(clip < 0.5, clip, 1 - clip))

  kernel = augment.gaussian_kernel(1.3, 5).numpy()
  assert kernel.shape == (11,) and abs(kernel.sum() - 1.0) < 1e-6
  np.testing.assert_allclose(kernel, kernel[::-1], atol=1e-7)
  blurred = augment.gaussian_blur(tf.constant(clip), 1.3, 3).numpy()
  for t in range(2):
    np.testing.assert_allclose(blurred[t], _np_blur(clip[t], 1.3, 3), atol=1e-5)
  flat = np.full((1, 16, 16, 3), 0.7, np.float32)  # Mirrored edges: no dark border.
  np.testing.assert_allclose(augment.gaussian_blur(flat, 2.0, 5), flat, atol=1e-6)
  assert augment.blur_radius(224) == 11  # 23 taps ~ crop_size / 10.


def test_saturation_and_hue_match_colorsys():
  rng = np.random.default_rng(2)
  img = rng.uniform(0, 1, size=(1, 4, 5, 3)).astype(np.float32)

  def via_hsv(fn):
    out = np.empty_like(img)
    for idx in np.ndindex(img.shape[:3]):
      out[idx] = colorsys.hsv_to_rgb(*fn(*colorsys.rgb_to_hsv(*img[idx])))
    return out

  np.testing.assert_allclose(
      tf.image.adjust_saturation(img, 1.6),
      via_hsv(lambda h, s, v: (h, min(s * 1.6, 1.0), v)), atol=1e-5)
  np.testing.assert_allclose(
      tf.image.adjust_hue(img, -0.15),
      via_hsv(lambda h, s, v: ((h - 0.15) % 1.0, s, v)), atol=1e-5)


def test_colour_blur_clip_applies_jitter_in_the_drawn_order():
  rng = np.random.default_rng(3)
  clip = rng.uniform(0, 1, size=(2, 8, 8, 3)).astype(np.float32)
  params = {'jitter': tf.constant(True), 'jitter_order': tf.constant([1, 0, 3, 2]),
            'brightness': tf.constant(1.7), 'contrast': tf.constant(0.5),
            'saturation': tf.constant(1.0), 'hue': tf.constant(0.0),
            'grayscale': tf.constant(True), 'blur_sigma': tf.constant(0.0),
            'solarize': tf.constant(True)}
  out = augment.colour_blur_clip(tf.constant(clip), params, radius=1).numpy()
  mean = clip.mean(axis=(0, 1, 2))
  ref = np.clip((clip - mean) * 0.5 + mean, 0, 1)  # Contrast first, then brightness.
  ref = np.clip(ref * 1.7, 0, 1)
  ref = np.stack([ref @ np.array([0.2989, 0.5870, 0.1140])] * 3, -1)
  ref = np.where(ref < 0.5, ref, 1 - ref)
  np.testing.assert_allclose(out, ref, atol=1e-5)


def test_eval_crops_positions():
  h, w = 4, 10
  frame = (np.arange(h)[:, None] * 100 + np.arange(w)[None, :]).astype(np.int32)
  clip = np.repeat(frame[None, :, :, None], 2, axis=0)  # [T=2, 4, 10, 1]
  crops = augment.eval_crops(clip, 4, num_crops=3).numpy()
  assert crops.shape == (3, 2, 4, 4, 1)
  assert [c[0, 0, 0, 0] for c in crops] == [0, 3, 6]  # Left, centre, right.
  portrait = np.transpose(clip, (0, 2, 1, 3))  # [2, 10, 4, 1]: top, centre, bottom.
  assert [c[0, 0, 0, 0] for c in augment.eval_crops(portrait, 4, 3).numpy()] == [0, 3, 6]
  centre = augment.eval_crops(clip, 4, num_crops=1).numpy()
  np.testing.assert_array_equal(centre[0], crops[1])
  with pytest.raises(ValueError):
    augment.eval_crops(clip, 4, num_crops=2)


def test_resize_short_side_and_resize_and_flip():
  frames = tf.zeros([2, 30, 40, 3], tf.uint8)
  assert augment.resize_short_side(frames, 15).shape == (2, 15, 20, 3)
  same = augment.resize_short_side(frames, 30, keep_dtype=True)
  assert same.dtype == tf.uint8 and same.shape == (2, 30, 40, 3)
  ramp = np.tile(np.arange(8, dtype=np.uint8)[None, None, :, None] * 30, (1, 8, 1, 3))
  flipped = augment.resize_and_flip(ramp, [8, 8], tf.constant(True), tf.uint8).numpy()
  np.testing.assert_array_equal(flipped, ramp[:, :, ::-1])
  as_float = augment.resize_and_flip(ramp, [8, 8], tf.constant(False)).numpy()
  np.testing.assert_allclose(as_float, ramp / 255.0, atol=1e-6)
