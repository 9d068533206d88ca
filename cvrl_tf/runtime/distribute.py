"""tf.distribute strategies by name, and the per-replica share of a global batch.

  'default'       no distribution: one device (the first GPU if any, else the CPU).
  'mirrored'      all local GPUs; or, with `num_cpu_devices=N`, N logical CPU devices
                  (to test multi-replica code on a laptop or CI machine).
  'multi_worker'  MultiWorkerMirroredStrategy over the cluster in the TF_CONFIG
                  environment variable (every worker runs the same program). A
                  collective that waits more than `collective_timeout_s` (600 s by
                  default) for another worker fails instead of hanging: a worker that
                  was killed or lost cannot leave the others waiting for ever.
  'tpu'           TPUStrategy on the TPU at `tpu_address` ('' or 'local' for a TPU VM).

Logical CPU devices and TPU initialisation must happen before TensorFlow initialises its
devices, i.e. before the first op runs: call `get_strategy` first thing in a program.

One strategy per process: `get_strategy` builds a distributed strategy once and returns
that same object to every later call with the same settings, so protocols run back to
back in one process (pretrain, then linear eval, then k-NN; or a test calling a protocol
twice) share it. A second MirroredStrategy would reuse the first one's collective
instance keys and its synchronized BatchNorm / gradient all-reduces would meet the wrong
tensors, and logical devices are fixed once TensorFlow has initialised, so asking for
different settings after one has been built raises StrategyError naming both. 'default'
(no distribution) is always available.
"""

import dataclasses
import json
import os
import threading
from typing import Dict, Optional, Tuple

import tensorflow as tf

STRATEGIES = ('default', 'mirrored', 'multi_worker', 'tpu')


DEFAULT_COLLECTIVE_TIMEOUT_S = 600.0


@dataclasses.dataclass(frozen=True)
class StrategySpec:
  """Where a protocol runs: a strategy name and its settings (module docstring)."""
  name: str = 'default'
  num_cpu_devices: Optional[int] = None
  tpu_address: Optional[str] = None
  collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S

  def build(self) -> tf.distribute.Strategy:
    return get_strategy(self.name, self.num_cpu_devices, self.tpu_address,
                        self.collective_timeout_s)


class StrategyError(RuntimeError):
  """The requested strategy cannot be built here; the message says why and what to do."""


def is_tpu(strategy: tf.distribute.Strategy) -> bool:
  """Whether `strategy` runs on TPU cores (its steps are XLA-compiled anyway)."""
  return isinstance(strategy, (tf.distribute.TPUStrategy,
                               tf.distribute.experimental.TPUStrategy))


def configure_cpu_devices(num_devices: int) -> list:
  """Splits the physical CPU into `num_devices` logical devices; returns their names."""
  if num_devices < 1:
    raise ValueError(f'num_cpu_devices must be >= 1, got {num_devices}')
  cpus = tf.config.list_physical_devices('CPU')
  try:
    tf.config.set_logical_device_configuration(
        cpus[0], [tf.config.LogicalDeviceConfiguration()] * num_devices)
  except RuntimeError as e:
    existing = tf.config.list_logical_devices('CPU')
    if len(existing) == num_devices:
      return [d.name for d in existing]  # Already configured the same way: fine.
    raise StrategyError(
        f'cannot split the CPU into {num_devices} logical devices: TensorFlow has already '
        f'initialised {len(existing)} CPU device(s) ({e}). Build the strategy before '
        f'running any TensorFlow op (first thing in the program, or in a fresh process).'
    ) from e
  return [d.name for d in tf.config.list_logical_devices('CPU')]


def _mirrored(num_cpu_devices: Optional[int]) -> tf.distribute.Strategy:
  if num_cpu_devices:
    return tf.distribute.MirroredStrategy(configure_cpu_devices(num_cpu_devices))
  return tf.distribute.MirroredStrategy()  # All visible GPUs, else the CPU.


def _multi_worker(timeout_s: float) -> tf.distribute.Strategy:
  raw = os.environ.get('TF_CONFIG')
  if not raw:
    raise StrategyError(
        "strategy 'multi_worker' needs the TF_CONFIG environment variable, e.g. "
        '{"cluster": {"worker": ["host1:2222", "host2:2222"]}, '
        '"task": {"type": "worker", "index": 0}} on each worker.')
  try:
    spec = json.loads(raw)
  except ValueError as e:
    raise StrategyError(f'TF_CONFIG is not valid JSON: {raw!r}') from e
  task = spec.get('task') if isinstance(spec, dict) else None
  if not isinstance(task, dict) or 'type' not in task or not spec.get('cluster'):
    raise StrategyError(f'TF_CONFIG needs "cluster" and "task": {{"type", "index"}}; '
                        f'got {raw!r}')
  resolver = tf.distribute.cluster_resolver.TFConfigClusterResolver()
  options = tf.distribute.experimental.CommunicationOptions(
      implementation=tf.distribute.experimental.CommunicationImplementation.AUTO,
      timeout_seconds=timeout_s)
  return tf.distribute.MultiWorkerMirroredStrategy(cluster_resolver=resolver,
                                                   communication_options=options)


def _tpu(tpu_address: Optional[str]) -> tf.distribute.Strategy:
  address = '' if tpu_address in (None, 'local') else tpu_address
  try:
    resolver = tf.distribute.cluster_resolver.TPUClusterResolver(tpu=address)
    if address:
      tf.config.experimental_connect_to_cluster(resolver)
    tf.tpu.experimental.initialize_tpu_system(resolver)
  except (ValueError, RuntimeError, tf.errors.OpError) as e:
    raise StrategyError(f'cannot reach the TPU at {tpu_address!r}: {e}') from e
  return tf.distribute.TPUStrategy(resolver)


# The distributed strategy this process has built, by its settings (at most one entry).
_BUILT: Dict[Tuple, tf.distribute.Strategy] = {}
_LOCK = threading.Lock()


def _settings(name: str, num_cpu_devices: Optional[int], tpu_address: Optional[str],
              timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> Tuple:
  """What identifies a strategy: the arguments that matter for `name`, normalised."""
  if name == 'mirrored':
    return (name, num_cpu_devices or None)  # 0 / None: all GPUs, else the CPU.
  if name == 'multi_worker':
    raw = os.environ.get('TF_CONFIG')
    try:
      raw = json.dumps(json.loads(raw), sort_keys=True) if raw else raw
    except ValueError:
      pass  # _multi_worker reports it.
    return (name, (raw, float(timeout_s)))
  return (name, '' if tpu_address in (None, 'local') else tpu_address)


def _describe(settings: Tuple) -> str:
  name, detail = settings
  if name == 'mirrored':
    return (f"'mirrored' with num_cpu_devices={detail}" if detail else
            "'mirrored' on all GPUs (num_cpu_devices=None)")
  if name == 'multi_worker':
    return f"'multi_worker' with TF_CONFIG={detail[0]} (collective timeout {detail[1]:g} s)"
  return f"'tpu' at {detail!r}" if detail else "'tpu' on the local TPU VM"


def _build(settings: Tuple) -> tf.distribute.Strategy:
  name, detail = settings
  if name == 'mirrored':
    return _mirrored(detail)
  if name == 'multi_worker':
    return _multi_worker(detail[1])
  return _tpu(detail)


def get_strategy(name: str = 'default',
                 num_cpu_devices: Optional[int] = None,
                 tpu_address: Optional[str] = None,
                 collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S
                 ) -> tf.distribute.Strategy:
  """The strategy called `name` (see the module docstring): built on the first call,
  the same object on every later call with the same settings.

  Raises StrategyError when another distributed strategy has already been built in
  this process (the message names both), or when this one cannot be built here.
  """
  name = name.lower()
  if name == 'default':
    return tf.distribute.get_strategy()
  if name not in STRATEGIES:
    raise ValueError(f'unknown strategy {name!r}; choose one of {STRATEGIES}')
  settings = _settings(name, num_cpu_devices, tpu_address, collective_timeout_s)
  with _LOCK:
    if settings in _BUILT:
      return _BUILT[settings]
    if _BUILT:
      built = _describe(next(iter(_BUILT)))
      raise StrategyError(
          f'get_strategy asked for {_describe(settings)}, but this process already built '
          f'{built}. A process has one distributed strategy: a second one would clash '
          f"with the first one's collective ops (synchronized BatchNorm, gradient "
          f'all-reduce), and logical devices are fixed once TensorFlow has initialised. '
          f'Use the same get_strategy settings for every protocol in this process, or run '
          f'this one in a fresh process.')
    strategy = _build(settings)
    _BUILT[settings] = strategy
    return strategy


def per_replica_batch_size(global_batch_size: int, num_replicas: int) -> int:
  """global_batch_size / num_replicas; raises unless it divides evenly.

  Every replica must hold the same number of videos: the contrastive loss pairs views by
  position and all-gathers equal-sized blocks, and gradient scaling assumes equal shares.
  """
  if global_batch_size <= 0 or num_replicas <= 0:
    raise ValueError(f'need positive sizes, got global_batch_size={global_batch_size}, '
                     f'num_replicas={num_replicas}')
  if global_batch_size % num_replicas:
    lower = global_batch_size - global_batch_size % num_replicas
    raise ValueError(
        f'global batch {global_batch_size} does not divide evenly over {num_replicas} '
        f'replicas; use a multiple of {num_replicas}, e.g. {lower or num_replicas} or '
        f'{lower + num_replicas}.')
  return global_batch_size // num_replicas


def replica_batch_size(global_batch_size: int,
                       strategy: Optional[tf.distribute.Strategy] = None) -> int:
  """Per-replica batch of `strategy` (the current one by default)."""
  strategy = strategy or tf.distribute.get_strategy()
  return per_replica_batch_size(global_batch_size, strategy.num_replicas_in_sync)
