"""Which precision a run computes in: chosen from the hardware ('auto') or given.

Every protocol takes `mixed_precision` ('auto' by default) and resolves it once at its
start with `resolve`, which prints the choice and why, and `record` appends it to
<model_dir>/run_info.json. The decision (`choose`, a pure function of the device facts):

  hardware                                   'auto' picks         why
  TPU                                        mixed_bfloat16       bf16 matrix units
  GPU, compute capability >= 8.0 (Ampere+)   mixed_bfloat16       bf16 tensor cores
  GPU, compute capability 7.x (V100, T4)     mixed_float16        fp16 tensor cores only;
                                                                  dynamic loss scaling
  GPU, compute capability < 7.0              float32              no tensor cores
  CPU with AVX512_BF16 or AMX-BF16           mixed_bfloat16       native bf16 in oneDNN
  any other CPU                              float32              bf16 emulated: 11x
                                                                  slower than float32
                                                                  on Eigen, ~50x than
                                                                  oneDNN's float32
With several GPUs the oldest decides. A CPU counts as native only if TensorFlow's oneDNN
kernels are on and ONEDNN_MAX_CPU_ISA does not cap bf16 away (runtime/hardware.py).
An explicit 'float32', 'mixed_bfloat16' or 'mixed_float16' is honoured; a one-line
warning says when the hardware has no native support for it. None means 'float32'.

Under 'mixed_float16' tf_keras wraps the optimizer in a dynamic LossScaleOptimizer at
`compile`: the train steps' `optimizer.minimize(loss, ..., tape=tape)` then scales the
loss, unscales the gradients and skips (and counts in `iterations`) a step whose
gradients overflow, halving the scale. The loss itself is computed in float32, so a
skipped step never shows as a NaN loss.
"""

import contextlib
import dataclasses
import datetime
import os
from typing import Optional, Tuple

import tensorflow as tf
import tf_keras

from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.runtime import distribute
from cvrl_tf.runtime import hardware

AUTO = 'auto'
POLICIES = ('float32', 'mixed_bfloat16', 'mixed_float16')
RUN_INFO_FILE = 'run_info.json'
BF16_MIN_COMPUTE_CAPABILITY = (8, 0)
FP16_MIN_COMPUTE_CAPABILITY = (7, 0)


@contextlib.contextmanager
def dtype_policy(policy: Optional[str]):
  """Sets the global policy ('float32', 'mixed_bfloat16', ...; None = 'float32')."""
  previous = tf_keras.mixed_precision.global_policy()
  tf_keras.mixed_precision.set_global_policy(policy or 'float32')
  try:
    yield
  finally:
    tf_keras.mixed_precision.set_global_policy(previous)


@dataclasses.dataclass(frozen=True)
class DeviceFacts:
  """What the decision looks at; tests build these by hand."""
  cpu: hardware.CpuInfo
  tpu: bool = False
  gpus: Tuple[Tuple[str, Tuple[int, int]], ...] = ()  # (name, compute capability)
  onednn: bool = True       # TensorFlow's oneDNN CPU kernels are on
  onednn_bf16: bool = True  # ONEDNN_MAX_CPU_ISA lets oneDNN use bf16 instructions
  onednn_fp16: bool = True  # ... and fp16 ones

  def oldest_gpu(self) -> Optional[Tuple[str, Tuple[int, int]]]:
    return min(self.gpus, key=lambda g: g[1]) if self.gpus else None

  def describe(self) -> str:
    if self.tpu:
      return 'TPU'
    if self.gpus:
      name, cc = self.oldest_gpu()
      return f'{len(self.gpus)} GPU(s), oldest {name} (compute capability {cc[0]}.{cc[1]})'
    onednn = 'oneDNN on' if self.onednn else 'oneDNN off'
    cap = hardware.onednn_isa_cap()
    return f'CPU {self.cpu.describe()}, {onednn}' + (f', {hardware.ONEDNN_ISA_ENV}={cap}'
                                                      if cap else '')


@dataclasses.dataclass(frozen=True)
class PrecisionChoice:
  policy: str                    # 'float32' | 'mixed_bfloat16' | 'mixed_float16'
  requested: str                 # 'auto' or the explicit policy
  reason: str
  warning: Optional[str] = None

  def summary(self) -> str:
    return f'precision: {self.policy} ({self.requested}: {self.reason})'


def _cpu_bf16(facts: DeviceFacts) -> Tuple[bool, str]:
  cpu = facts.cpu
  if not cpu.has_native_bf16:
    return False, (f'CPU {cpu.describe()} has no native bfloat16 (avx512_bf16 / '
                   f'amx_bf16): TensorFlow emulates it, 10-50x slower than float32')
  if not facts.onednn:
    return False, (f'CPU {cpu.describe()} has native bfloat16 but TensorFlow\'s oneDNN '
                   f'kernels are off ({hardware.ONEDNN_ENV}=0): bfloat16 runs emulated')
  if not facts.onednn_bf16:
    return False, (f'CPU {cpu.describe()} has native bfloat16 but '
                   f'{hardware.ONEDNN_ISA_ENV}={hardware.onednn_isa_cap()} keeps oneDNN '
                   f'from using it')
  return True, f'CPU {cpu.describe()} computes bfloat16 natively (oneDNN)'


def native_support(policy: str, facts: DeviceFacts) -> Tuple[bool, str]:
  """(whether the devices compute `policy` at full speed, a sentence saying why)."""
  if policy == 'float32':
    return True, 'float32 runs everywhere'
  if facts.tpu:
    if policy == 'mixed_bfloat16':
      return True, 'TPU (bfloat16 matrix units)'
    return False, 'TPUs compute bfloat16, not float16'
  if facts.gpus:
    name, cc = facts.oldest_gpu()
    where = f'GPU {name} (compute capability {cc[0]}.{cc[1]})'
    if policy == 'mixed_bfloat16':
      if cc >= BF16_MIN_COMPUTE_CAPABILITY:
        return True, f'{where} has bfloat16 tensor cores'
      return False, f'{where} has no bfloat16 units (compute capability >= 8.0 has)'
    if cc >= FP16_MIN_COMPUTE_CAPABILITY:
      return True, f'{where} has float16 tensor cores'
    return False, f'{where} has no tensor cores (compute capability >= 7.0 has)'
  if policy == 'mixed_bfloat16':
    return _cpu_bf16(facts)
  if facts.cpu.has_native_fp16 and facts.onednn and facts.onednn_fp16:
    return True, f'CPU {facts.cpu.describe()} computes float16 natively (oneDNN)'
  return False, f'CPU {facts.cpu.describe()} has no native float16: TensorFlow emulates it'


def choose(requested: Optional[str], facts: DeviceFacts) -> PrecisionChoice:
  """The policy for `requested` ('auto', a policy name, or None = 'float32')."""
  if requested is None:
    requested = 'float32'
  if requested not in (AUTO,) + POLICIES:
    raise ValueError(f'mixed_precision={requested!r} is not a precision: use '
                     f"'auto' (the hardware decides), 'float32', 'mixed_bfloat16' or "
                     f"'mixed_float16'")
  if requested != AUTO:
    native, why = native_support(requested, facts)
    warning = None if native else (
        f'mixed_precision={requested!r} without native support: {why}. '
        f"Use mixed_precision='auto' (or 'float32') for speed.")
    return PrecisionChoice(requested, requested, 'explicit' if native else why, warning)
  if facts.gpus and not facts.tpu:
    for policy in ('mixed_bfloat16', 'mixed_float16'):
      native, why = native_support(policy, facts)
      if native:
        suffix = ', with dynamic loss scaling' if policy == 'mixed_float16' else ''
        return PrecisionChoice(policy, AUTO, why + suffix)
    return PrecisionChoice('float32', AUTO, why)
  native, why = native_support('mixed_bfloat16', facts)
  return PrecisionChoice('mixed_bfloat16' if native else 'float32', AUTO, why)


def detect_devices(strategy: Optional[tf.distribute.Strategy] = None) -> DeviceFacts:
  """The facts of this process's devices (the strategy's, when it has TPUs)."""
  strategy = strategy or tf.distribute.get_strategy()
  tpu = (distribute.is_tpu(strategy) or
         bool(tf.config.list_logical_devices('TPU')))
  gpus = []
  for gpu in tf.config.list_physical_devices('GPU'):
    details = tf.config.experimental.get_device_details(gpu)
    cc = details.get('compute_capability') or (0, 0)
    gpus.append((details.get('device_name', gpu.name), tuple(cc)))
  try:
    from tensorflow.python.util import _pywrap_util_port  # pylint: disable=g-import-not-at-top
    onednn = bool(_pywrap_util_port.IsMklEnabled())
  except (ImportError, AttributeError):  # Private API: fall back to the variable.
    onednn = bool(hardware.onednn_requested())
  return DeviceFacts(cpu=hardware.read_cpu(), tpu=tpu, gpus=tuple(gpus), onednn=onednn,
                     onednn_bf16=hardware.onednn_allows('AVX512_CORE_BF16'),
                     onednn_fp16=hardware.onednn_allows('AVX512_CORE_FP16'))


def resolve(requested: Optional[str],
            strategy: Optional[tf.distribute.Strategy] = None,
            stream='stderr',
            facts: Optional[DeviceFacts] = None) -> PrecisionChoice:
  """Chooses the policy for this machine and says so (and warns) on `stream`."""
  stream = progress_lib.resolve_stream(stream)
  choice = choose(requested, facts or detect_devices(strategy))
  if stream is not None:
    print(choice.summary(), file=stream, flush=True)
    if choice.warning:
      print(f'WARNING: {choice.warning}', file=stream, flush=True)
  return choice


def record(model_dir: str, choice: PrecisionChoice, protocol: str,
           facts: Optional[DeviceFacts] = None, settings: Optional[dict] = None) -> str:
  """Appends this start (time, protocol, precision, devices, the checkpoint it resumes
  from, the protocol's settings) to run_info.json: a run resumed on other hardware or
  with other settings lists each part."""
  from cvrl_tf.runtime import train_loop  # pylint: disable=g-import-not-at-top
  facts = facts or detect_devices()
  resumes = tf.train.latest_checkpoint(os.path.join(model_dir, train_loop.CHECKPOINT_SUBDIR))
  path = os.path.join(model_dir, RUN_INFO_FILE)
  starts = (files_lib.read_json(path) or {}).get('starts', [])
  starts.append({
      'time': datetime.datetime.now(datetime.timezone.utc).isoformat(timespec='seconds'),
      'protocol': protocol, 'resumes_from': resumes,
      'precision': dataclasses.asdict(choice),
      'devices': facts.describe(), 'cpu': facts.cpu.model, 'isa': facts.cpu.isa_class,
      'onednn': {'on': facts.onednn, 'set_by': hardware.onednn_source(),
                 'max_cpu_isa': hardware.onednn_isa_cap()},
      'tensorflow': tf.__version__,
      **({} if settings is None else {'settings': settings}),
  })
  tf.io.gfile.makedirs(model_dir)
  return files_lib.write_json(path, {'starts': starts})
