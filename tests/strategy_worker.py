"""Subprocess side of the distribution tests (run by tests/test_distribute.py).

Strategies must be built before TensorFlow initialises its devices, which the pytest
process has long done, so each check runs here in a fresh process and writes an .npz
that the test compares:

  python strategy_worker.py mirrored OUT.npz
      2 logical CPUs: one SGD step (lr 1, no momentum) with the pretrainer under
      MirroredStrategy (also through a LossScaleOptimizer) and on one device, same
      global batch -> gradients, logs, weights.
  python strategy_worker.py multi_worker OUT.npz --index=I --ports=P0,P1 --steps=N
      worker I of a 2-worker MultiWorkerMirroredStrategy on 127.0.0.1: N fit steps with
      the real optimizer, each worker feeding its own data -> final weights and logs.

Also the tiny stand-in model and data shared with the in-process tests.
"""

import argparse
import json
import os
import sys

import numpy as np

CLIP_SHAPE = (4, 12, 12, 3)  # T, H, W, C: tiny, the tests are about numbers not speed.


def build_model(seed: int = 0, sync_bn: bool = True, **kwargs):
  """Stand-in encoder (Conv3D + BN + pooling) and head (Dense + BN + ReLU + Dense)."""
  import tf_keras  # pylint: disable=g-import-not-at-top
  from cvrl_tf.models import pretrainer  # pylint: disable=g-import-not-at-top
  tf_keras.utils.set_random_seed(seed)
  layers = tf_keras.layers
  encoder = tf_keras.Sequential([
      tf_keras.Input((None, None, None, 3)),
      layers.Conv3D(8, 3, strides=(1, 2, 2), use_bias=False, name='conv'),
      layers.BatchNormalization(synchronized=sync_bn, name='bn'),
      layers.ReLU(),
      layers.GlobalAveragePooling3D(),
  ], name='encoder')
  head = tf_keras.Sequential([
      tf_keras.Input((8,)),
      layers.Dense(16, use_bias=False, name='hidden'),
      layers.BatchNormalization(synchronized=sync_bn, name='head_bn'),
      layers.ReLU(),
      layers.Dense(6, name='out'),
  ], name='head')
  return pretrainer.CVRLPretrainer(encoder, head, **kwargs)


def views(seed: int, b: int):
  """Two correlated views of b random 'videos': float32 [b, T, H, W, 3] each."""
  rng = np.random.RandomState(seed)
  base = rng.rand(b, *CLIP_SHAPE)
  v1 = np.clip(base + 0.1 * rng.randn(*base.shape), 0, 1).astype(np.float32)
  v2 = np.clip(base + 0.1 * rng.randn(*base.shape), 0, 1).astype(np.float32)
  return v1, v2


def global_batch(seed: int, b: int, num_replicas: int):
  """(single-device batch [2B], per-replica batches [2b] each) of the same B videos."""
  v1, v2 = views(seed, b * num_replicas)
  single = np.concatenate([v1, v2])
  local = [np.concatenate([v1[r * b:(r + 1) * b], v2[r * b:(r + 1) * b]])
           for r in range(num_replicas)]
  return single, local


def _fit_once(strategy, batches, init, jit_compile, loss_scale=None):
  """One fit step of SGD(lr=1), one batch per replica: (w0 - w1, logs, weights, names).

  loss_scale: wrap SGD in a static LossScaleOptimizer (the mixed_float16 path's
  scaling, in float32 so that only the scaling is compared).
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  import tf_keras  # pylint: disable=g-import-not-at-top
  with strategy.scope():
    model = build_model(weight_decay=1e-3)
    optimizer = tf_keras.optimizers.legacy.SGD(1.0)
    if loss_scale:
      optimizer = tf_keras.mixed_precision.LossScaleOptimizer(
          optimizer, dynamic=False, initial_scale=loss_scale)
    model.compile(optimizer=optimizer, jit_compile=jit_compile)
    model.build_for_training()
    if init is not None:
      model.set_weights(init)
  before = [v.numpy() for v in model.trainable_variables]
  # From a function, each replica takes the next element whole: replica r gets
  # batches[r] (experimental_distribute_dataset would instead split every element).
  ds = strategy.distribute_datasets_from_function(
      lambda ctx: tf.data.Dataset.from_tensor_slices({'clips': np.stack(batches)}))
  history = model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0).history
  grads = [b - v.numpy() for b, v in zip(before, model.trainable_variables)]
  logs = {k: float(v[-1]) for k, v in history.items() if k != 'loss_scale'}
  return grads, logs, model.get_weights(), [v.name for v in model.trainable_variables]


def _store(results, tag, fitted):
  grads, logs, weights, names = fitted
  results['names'] = np.array(names)
  for i, g in enumerate(grads):
    results[f'{tag}/grad_{i}'] = g
  for i, w in enumerate(weights):
    results[f'{tag}/weight_{i}'] = w
  results[f'{tag}/logs'] = np.array(json.dumps(logs))


def run_mirrored(out: str) -> None:
  from cvrl_tf.runtime import distribute  # pylint: disable=g-import-not-at-top
  strategy = distribute.get_strategy('mirrored', num_cpu_devices=2)  # First TF call.
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  assert strategy.num_replicas_in_sync == 2, strategy.num_replicas_in_sync
  single, local = global_batch(seed=7, b=3, num_replicas=2)
  results = {}
  init_model = build_model(weight_decay=1e-3)
  init_model.build_for_training()
  init = init_model.get_weights()
  _store(results, 'single', _fit_once(tf.distribute.get_strategy(), [single], init, False))
  _store(results, 'mirrored', _fit_once(strategy, local, init, False))
  _store(results, 'mirrored_loss_scaled', _fit_once(strategy, local, init, False,
                                                    loss_scale=256.0))
  try:
    _store(results, 'mirrored_xla', _fit_once(strategy, local, init, True))
  except Exception as e:  # pylint: disable=broad-except
    results['mirrored_xla_error'] = np.array(repr(e)[:3000])
  np.savez(out, **results)


def run_multi_worker(out: str, index: int, ports, steps: int) -> None:
  os.environ['TF_CONFIG'] = json.dumps({
      'cluster': {'worker': [f'127.0.0.1:{p}' for p in ports]},
      'task': {'type': 'worker', 'index': index}})
  from cvrl_tf.runtime import distribute  # pylint: disable=g-import-not-at-top
  strategy = distribute.get_strategy('multi_worker')
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  with strategy.scope():
    model = build_model(weight_decay=1e-3)
    model.compile(optimizer=multi_worker_optimizer(steps))
    model.build_for_training()

  def dataset_fn(ctx):
    # Each worker feeds its own share of every global batch.
    local = [multi_worker_batches(s)[1][ctx.input_pipeline_id] for s in range(steps)]
    return tf.data.Dataset.from_tensor_slices({'clips': np.stack(local)})

  ds = strategy.distribute_datasets_from_function(dataset_fn)
  history = model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0).history
  results = {f'weight_{i}': w for i, w in enumerate(model.get_weights())}
  results['logs'] = np.array(json.dumps({k: [float(x) for x in v]
                                         for k, v in history.items()}))
  results['replicas'] = np.array(strategy.num_replicas_in_sync)
  np.savez(out, **results)


def multi_worker_optimizer(steps: int):
  from cvrl_tf.runtime import optim  # pylint: disable=g-import-not-at-top
  return optim.build_optimizer(total_steps=steps + 1, warmup_steps=1,
                               base_learning_rate=0.5, name='sgd')


def multi_worker_batches(step: int):
  return global_batch(seed=100 + step, b=2, num_replicas=2)


def main(argv=None):
  parser = argparse.ArgumentParser()
  parser.add_argument('mode', choices=['mirrored', 'multi_worker'])
  parser.add_argument('out')
  parser.add_argument('--index', type=int, default=0)
  parser.add_argument('--ports', default='')
  parser.add_argument('--steps', type=int, default=3)
  args = parser.parse_args(argv)
  if args.mode == 'mirrored':
    run_mirrored(args.out)
  else:
    ports = [int(p) for p in args.ports.split(',')]
    run_multi_worker(args.out, args.index, ports, args.steps)
  return 0


if __name__ == '__main__':
  sys.exit(main())
