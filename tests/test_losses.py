"""InfoNCE against an independent NumPy implementation (loss, accuracy, entropy)."""

import numpy as np
import pytest
import tensorflow as tf

from cvrl_tf import losses


def numpy_infonce(embeddings, temperature):
  """Straight from the definition, one anchor at a time, in float64."""
  z = embeddings.astype(np.float64)
  z = z / np.linalg.norm(z, axis=1, keepdims=True)
  n = len(z)
  b = n // 2
  per_anchor, correct, entropy = [], [], []
  for i in range(n):
    positive = (i + b) % n
    others = [j for j in range(n) if j != i]
    logits = np.array([z[i] @ z[j] for j in others]) / temperature
    log_probs = logits - logits.max() - np.log(np.sum(np.exp(logits - logits.max())))
    per_anchor.append(-log_probs[others.index(positive)])
    correct.append(others[int(np.argmax(logits))] == positive)
    entropy.append(-np.sum(np.exp(log_probs) * log_probs))
  return np.mean(per_anchor), np.mean(correct), np.mean(entropy)


@pytest.mark.parametrize('b,dim,temperature', [
    (1, 4, 0.1), (2, 8, 0.1), (5, 16, 0.05), (8, 3, 0.5), (3, 128, 1.0)])
def test_matches_numpy(b, dim, temperature):
  rng = np.random.RandomState(b * 100 + dim)
  emb = rng.randn(2 * b, dim).astype(np.float32)
  # Make some positives close so that accuracy is not trivially 0 or 1.
  emb[b:] = emb[:b] + rng.randn(b, dim).astype(np.float32) * rng.uniform(0.2, 3.0)
  out = losses.contrastive_loss(tf.constant(emb), temperature)
  want_loss, want_acc, want_entropy = numpy_infonce(emb, temperature)
  for key in ('loss', 'accuracy', 'entropy'):
    assert out[key].dtype == tf.float32 and out[key].shape == ()
  np.testing.assert_allclose(out['loss'].numpy(), want_loss, rtol=2e-5, atol=1e-5)
  np.testing.assert_allclose(out['accuracy'].numpy(), want_acc, atol=1e-6)
  np.testing.assert_allclose(out['entropy'].numpy(), want_entropy, rtol=2e-5, atol=1e-5)


def test_unnormalized_scale_does_not_matter():
  emb = np.random.RandomState(0).randn(6, 5).astype(np.float32)
  scales = np.array([[0.01], [1], [100], [3], [0.5], [7]], np.float32)
  a = losses.contrastive_loss(tf.constant(emb), 0.1)['loss']
  b = losses.contrastive_loss(tf.constant(emb * scales), 0.1)['loss']
  np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5)


def test_collapsed_embeddings_give_uniform_distribution():
  """All clips identical: self masked, the other 2B - 1 candidates tie."""
  b = 4
  out = losses.contrastive_loss(tf.ones((2 * b, 8)), 0.1)
  np.testing.assert_allclose(out['loss'].numpy(), np.log(2 * b - 1), rtol=1e-5)
  np.testing.assert_allclose(out['entropy'].numpy(), np.log(2 * b - 1), rtol=1e-5)
  assert np.isfinite(out['entropy'].numpy())


def test_perfect_pairs_have_full_accuracy_and_low_loss():
  # Orthogonal videos, the two views of each identical.
  base = np.eye(4, dtype=np.float32)
  out = losses.contrastive_loss(tf.constant(np.concatenate([base, base])), 0.05)
  assert out['accuracy'].numpy() == 1.0
  assert out['loss'].numpy() < 1e-6
  assert out['entropy'].numpy() < 1e-6


def test_symmetric_over_views():
  """Swapping the view blocks changes nothing (both directions are averaged)."""
  emb = np.random.RandomState(3).randn(10, 6).astype(np.float32)
  swapped = np.concatenate([emb[5:], emb[:5]])
  a = losses.contrastive_loss(tf.constant(emb), 0.2)
  b = losses.contrastive_loss(tf.constant(swapped), 0.2)
  for key in a:
    np.testing.assert_allclose(a[key].numpy(), b[key].numpy(), rtol=1e-5, atol=1e-6)


def test_bfloat16_inputs_compute_in_float32():
  emb = np.random.RandomState(1).randn(8, 16).astype(np.float32)
  out = losses.contrastive_loss(tf.cast(emb, tf.bfloat16), 0.1)
  assert out['loss'].dtype == tf.float32
  rounded = tf.cast(tf.cast(emb, tf.bfloat16), tf.float32).numpy()
  np.testing.assert_allclose(out['loss'].numpy(), numpy_infonce(rounded, 0.1)[0], rtol=1e-4)


def test_xla_matches_eager():
  emb = tf.constant(np.random.RandomState(2).randn(12, 8).astype(np.float32))
  fn = tf.function(lambda e: losses.contrastive_loss(e, 0.1), jit_compile=True)
  eager = losses.contrastive_loss(emb, 0.1)
  compiled = fn(emb)
  for key in eager:
    np.testing.assert_allclose(compiled[key].numpy(), eager[key].numpy(), rtol=1e-5)


def test_odd_batch_is_rejected():
  with pytest.raises(ValueError, match='even'):
    losses.contrastive_loss(tf.zeros((5, 4)), 0.1)
