"""What this machine's CPU can do, and TensorFlow's oneDNN switch. Imports no TensorFlow.

Why it matters (measured, benchmarks/README.md "Machine classes"):
- TensorFlow's Linux wheels turn their oneDNN kernels on by default only on CPUs with
  AVX512_VNNI, AVX512_BF16, AVX_VNNI or AMX (tensorflow/core/util/port.cc,
  DefaultOneDnnPolicy). Every other x86 CPU (AVX2-only: AMD before Zen 4, Intel before
  Cascade Lake / Alder Lake) gets Eigen's 3-D convolutions instead: the demo's train step
  took 6.1 s with Eigen against 0.19 s with oneDNN's AVX2 kernels on the same 2 cores
  (an AMD EPYC Zen 4 standing in, benchmarks/README.md "Machine classes"). `prefer_onednn()` turns them on
  unless the user set TF_ENABLE_ONEDNN_OPTS; it must run before TensorFlow is imported,
  so `cvrl_tf/__init__.py` calls it.
- bfloat16 is fast only where the CPU computes it natively (AVX512_BF16, AMX-BF16) and
  oneDNN may use those instructions (ONEDNN_MAX_CPU_ISA not capping them away).
"""

import dataclasses
import os
import platform
import sys
from typing import FrozenSet, Optional

ONEDNN_ENV = 'TF_ENABLE_ONEDNN_OPTS'
ONEDNN_ISA_ENV = 'ONEDNN_MAX_CPU_ISA'
# oneDNN ISA names (ONEDNN_MAX_CPU_ISA), oldest first; bf16 dot products from
# AVX512_CORE_BF16 on, fp16 from AVX512_CORE_FP16 on. Aliases map to their rank.
_ONEDNN_ISAS = ('SSE41', 'AVX', 'AVX2', 'AVX2_VNNI', 'AVX2_VNNI_2', 'AVX512_CORE',
                'AVX512_CORE_VNNI', 'AVX512_CORE_BF16', 'AVX512_CORE_FP16',
                'AVX512_CORE_AMX', 'AVX512_CORE_AMX_FP16')
_ONEDNN_ALIASES = {'AVX10_1_512': 'AVX512_CORE_FP16', 'AVX10_1_512_AMX': 'AVX512_CORE_AMX',
                   'AVX10_1_512_AMX_FP16': 'AVX512_CORE_AMX_FP16'}


@dataclasses.dataclass(frozen=True)
class CpuInfo:
  """The CPU as /proc/cpuinfo (or the platform module) describes it."""
  model: str
  flags: FrozenSet[str]
  machine: str = 'x86_64'

  @property
  def isa_class(self) -> str:
    """'AMX' | 'AVX512-BF16' | 'AVX-512' | 'AVX2' | 'pre-AVX2' (x86), else the machine."""
    if self.machine not in ('x86_64', 'AMD64', 'i686', 'x86'):
      return self.machine
    if not self.flags:  # No /proc/cpuinfo (e.g. macOS): nothing to go by.
      return 'unknown'
    if 'amx_bf16' in self.flags:
      return 'AMX'
    if 'avx512_bf16' in self.flags:
      return 'AVX512-BF16'
    if 'avx512f' in self.flags:
      return 'AVX-512'
    if 'avx2' in self.flags:
      return 'AVX2'
    return 'pre-AVX2'

  @property
  def has_native_bf16(self) -> bool:
    return bool(self.flags & {'avx512_bf16', 'amx_bf16'})

  @property
  def has_native_fp16(self) -> bool:
    return bool(self.flags & {'avx512_fp16', 'amx_fp16'})

  def describe(self) -> str:
    """'AMD EPYC (AVX512-BF16)': the line every benchmark table and run log carries."""
    return f'{self.model} ({self.isa_class})'


def read_cpu(cpuinfo_path: str = '/proc/cpuinfo') -> CpuInfo:
  """This machine's CPU; flags are empty where /proc/cpuinfo does not exist."""
  model, flags = '', frozenset()
  try:
    with open(cpuinfo_path, encoding='utf-8', errors='replace') as f:
      for line in f:
        key, _, value = line.partition(':')
        key = key.strip()
        if key == 'model name' and not model:
          model = value.strip()
        elif key in ('flags', 'Features') and not flags:
          flags = frozenset(value.split())
        if model and flags:
          break
  except OSError:
    pass
  return CpuInfo(model=model or platform.processor() or 'unknown CPU', flags=flags,
                 machine=platform.machine())


def onednn_isa_cap() -> Optional[str]:
  """ONEDNN_MAX_CPU_ISA, upper-cased, or None when unset / 'ALL' / 'DEFAULT'."""
  value = os.environ.get(ONEDNN_ISA_ENV, '').strip().upper()
  value = _ONEDNN_ALIASES.get(value, value)
  return value if value and value not in ('ALL', 'DEFAULT') else None


def onednn_allows(isa: str) -> bool:
  """Whether ONEDNN_MAX_CPU_ISA lets oneDNN use `isa` (an entry of _ONEDNN_ISAS)."""
  cap = onednn_isa_cap()
  if cap is None or cap not in _ONEDNN_ISAS:
    return True
  return _ONEDNN_ISAS.index(cap) >= _ONEDNN_ISAS.index(isa)


def onednn_requested() -> Optional[bool]:
  """TF_ENABLE_ONEDNN_OPTS as a bool, None when unset (TensorFlow then decides)."""
  value = os.environ.get(ONEDNN_ENV)
  if value is None:
    return None
  return value.strip().lower() in ('1', 'true')


# Set beside TF_ENABLE_ONEDNN_OPTS so that child processes (the demo's steps, tests'
# workers) still know the value came from cvrl_tf, not from the user.
MARKER_ENV = 'CVRL_TF_SET_ONEDNN_OPTS'


def prefer_onednn() -> bool:
  """Turns TensorFlow's oneDNN kernels on for x86 Linux unless the user chose.

  Call before TensorFlow is imported (TensorFlow reads the variable once). Returns
  whether this call set it.
  """
  if (ONEDNN_ENV in os.environ or 'tensorflow' in sys.modules or
      platform.system() != 'Linux' or platform.machine() not in ('x86_64', 'AMD64')):
    return False
  os.environ[ONEDNN_ENV] = '1'
  os.environ[MARKER_ENV] = '1'
  return True


def onednn_source() -> str:
  """Who decided whether oneDNN is on: 'cvrl_tf', 'user' or 'tensorflow default'."""
  if os.environ.get(MARKER_ENV) == '1' and os.environ.get(ONEDNN_ENV) == '1':
    return 'cvrl_tf'
  return 'user' if ONEDNN_ENV in os.environ else 'tensorflow default'
