"""precision: the policy chosen for the hardware (facts injected), explicit policies and
their warnings, run_info.json; hardware: /proc/cpuinfo parsing and oneDNN switches."""

import io
import json

import pytest
import tf_keras

from cvrl_tf.runtime import hardware
from cvrl_tf.runtime import precision

AVX2 = frozenset('fpu sse4_2 avx fma avx2'.split())
AVX512 = AVX2 | {'avx512f', 'avx512bw', 'avx512_vnni'}
ZEN4 = AVX512 | {'avx512_bf16'}
SAPPHIRE_RAPIDS = ZEN4 | {'amx_tile', 'amx_bf16', 'amx_int8', 'avx512_fp16'}


def _cpu(flags, model='Test CPU'):
  return hardware.CpuInfo(model=model, flags=frozenset(flags))


def _facts(flags=AVX2, **kwargs):
  return precision.DeviceFacts(cpu=_cpu(flags), **kwargs)


def _current():
  return tf_keras.mixed_precision.global_policy().name


def test_dtype_policy_sets_and_restores():
  assert _current() == 'float32'
  with precision.dtype_policy('mixed_bfloat16'):
    assert _current() == 'mixed_bfloat16'
    assert tf_keras.layers.Dense(2).compute_dtype == 'bfloat16'
    with precision.dtype_policy(None):  # None means float32
      assert _current() == 'float32'
    assert _current() == 'mixed_bfloat16'
  assert _current() == 'float32'
  with pytest.raises(RuntimeError):
    with precision.dtype_policy('mixed_bfloat16'):
      raise RuntimeError('a failing protocol')
  assert _current() == 'float32'


@pytest.mark.parametrize('facts, want', [
    (_facts(tpu=True), 'mixed_bfloat16'),
    (_facts(gpus=(('NVIDIA A100', (8, 0)),)), 'mixed_bfloat16'),
    (_facts(gpus=(('NVIDIA H100', (9, 0)), ('NVIDIA L4', (8, 9)))), 'mixed_bfloat16'),
    (_facts(gpus=(('Tesla V100', (7, 0)),)), 'mixed_float16'),
    (_facts(gpus=(('Tesla T4', (7, 5)),)), 'mixed_float16'),
    (_facts(gpus=(('NVIDIA A100', (8, 0)), ('Tesla T4', (7, 5)))), 'mixed_float16'),
    (_facts(gpus=(('Tesla P100', (6, 0)),)), 'float32'),
    (_facts(SAPPHIRE_RAPIDS), 'mixed_bfloat16'),
    (_facts(ZEN4), 'mixed_bfloat16'),
    (_facts(AVX512), 'float32'),
    (_facts(AVX2), 'float32'),
    (_facts(frozenset()), 'float32'),
    (_facts(ZEN4, onednn=False), 'float32'),        # TF_ENABLE_ONEDNN_OPTS=0
    (_facts(ZEN4, onednn_bf16=False), 'float32'),   # ONEDNN_MAX_CPU_ISA=AVX2
    (_facts(ZEN4, gpus=(('Tesla V100', (7, 0)),)), 'mixed_float16'),  # the GPU computes
])
def test_auto_decision_table(facts, want):
  choice = precision.choose('auto', facts)
  assert (choice.policy, choice.requested, choice.warning) == (want, 'auto', None)
  assert choice.reason


def test_auto_says_why():
  assert 'no native bfloat16' in precision.choose('auto', _facts(AVX2)).reason
  assert 'AVX512-BF16' in precision.choose('auto', _facts(ZEN4)).reason
  assert 'oneDNN kernels are off' in precision.choose('auto', _facts(ZEN4, onednn=False)).reason
  v100 = precision.choose('auto', _facts(gpus=(('Tesla V100', (7, 0)),)))
  assert 'loss scaling' in v100.reason and '7.0' in v100.reason


@pytest.mark.parametrize('requested, facts, warns', [
    ('float32', _facts(tpu=True), False),
    ('float32', _facts(AVX2), False),
    ('mixed_bfloat16', _facts(AVX2), True),
    ('mixed_bfloat16', _facts(ZEN4), False),
    ('mixed_bfloat16', _facts(ZEN4, onednn_bf16=False), True),
    ('mixed_bfloat16', _facts(gpus=(('Tesla T4', (7, 5)),)), True),
    ('mixed_bfloat16', _facts(tpu=True), False),
    ('mixed_float16', _facts(ZEN4), True),
    ('mixed_float16', _facts(SAPPHIRE_RAPIDS), False),
    ('mixed_float16', _facts(gpus=(('Tesla V100', (7, 0)),)), False),
    ('mixed_float16', _facts(gpus=(('Tesla K80', (3, 7)),)), True),
    ('mixed_float16', _facts(tpu=True), True),
])
def test_explicit_policy_is_honoured_with_a_warning_without_native_support(
    requested, facts, warns):
  choice = precision.choose(requested, facts)
  assert choice.policy == requested == choice.requested
  assert bool(choice.warning) == warns
  if warns:
    assert '\n' not in choice.warning and "mixed_precision='auto'" in choice.warning


def test_none_is_float32_and_unknown_names_are_refused():
  assert precision.choose(None, _facts(ZEN4)).policy == 'float32'
  with pytest.raises(ValueError, match="'bfloat16' is not a precision.*'auto'"):
    precision.choose('bfloat16', _facts())


def test_resolve_prints_the_choice_and_one_warning_line():
  stream = io.StringIO()
  choice = precision.resolve('mixed_bfloat16', stream=stream, facts=_facts(AVX2))
  lines = stream.getvalue().splitlines()
  assert choice.policy == 'mixed_bfloat16'
  assert lines[0].startswith('precision: mixed_bfloat16 (mixed_bfloat16: CPU Test CPU')
  assert len(lines) == 2 and lines[1].startswith('WARNING: ')
  stream = io.StringIO()
  precision.resolve('auto', stream=stream, facts=_facts(AVX2))
  assert stream.getvalue().splitlines() == [
      'precision: float32 (auto: CPU Test CPU (AVX2) has no native bfloat16 '
      '(avx512_bf16 / amx_bf16): TensorFlow emulates it, 10-50x slower than float32)']


def test_record_appends_each_start_to_run_info(tmp_path):
  facts = _facts(ZEN4)
  first = precision.choose('auto', facts)
  precision.record(str(tmp_path), first, 'pretrain', facts)
  precision.record(str(tmp_path), precision.choose('float32', facts), 'pretrain', facts)
  starts = json.loads((tmp_path / precision.RUN_INFO_FILE).read_text())['starts']
  assert [s['precision']['policy'] for s in starts] == ['mixed_bfloat16', 'float32']
  assert starts[0]['precision']['requested'] == 'auto'
  assert starts[0]['isa'] == 'AVX512-BF16' and starts[0]['cpu'] == 'Test CPU'
  assert starts[0]['resumes_from'] is None and starts[0]['tensorflow']


def test_detect_devices_on_this_machine():
  facts = precision.detect_devices()
  assert not facts.tpu and facts.cpu.model
  # cvrl_tf turns oneDNN on before TensorFlow loads (unless the user chose).
  if hardware.onednn_source() == 'cvrl_tf':
    assert facts.onednn


# ------------------------------------------------------------------------- hardware
def test_read_cpu_parses_proc_cpuinfo(tmp_path):
  path = tmp_path / 'cpuinfo'
  path.write_text('processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\n'
                  'flags\t\t: fpu sse4_2 avx avx2 fma\n\nprocessor\t: 1\n'
                  'model name\t: AMD EPYC 7B13\nflags\t\t: fpu\n')
  cpu = hardware.read_cpu(str(path))
  assert cpu.model == 'AMD EPYC 7B13' and 'avx2' in cpu.flags and 'fpu' in cpu.flags
  assert hardware.read_cpu(str(tmp_path / 'missing')).flags == frozenset()


@pytest.mark.parametrize('flags, isa', [
    (SAPPHIRE_RAPIDS, 'AMX'), (ZEN4, 'AVX512-BF16'), (AVX512, 'AVX-512'), (AVX2, 'AVX2'),
    (frozenset({'sse4_2'}), 'pre-AVX2')])
def test_isa_class(flags, isa):
  assert _cpu(flags).isa_class == isa
  assert _cpu(flags).describe() == f'Test CPU ({isa})'
  assert hardware.CpuInfo('Graviton', frozenset(), machine='aarch64').isa_class == 'aarch64'


def test_onednn_isa_cap(monkeypatch):
  monkeypatch.delenv(hardware.ONEDNN_ISA_ENV, raising=False)
  assert hardware.onednn_isa_cap() is None and hardware.onednn_allows('AVX512_CORE_BF16')
  monkeypatch.setenv(hardware.ONEDNN_ISA_ENV, 'avx2')
  assert hardware.onednn_isa_cap() == 'AVX2'
  assert not hardware.onednn_allows('AVX512_CORE_BF16')
  assert hardware.onednn_allows('AVX2')
  monkeypatch.setenv(hardware.ONEDNN_ISA_ENV, 'AVX512_CORE_AMX')
  assert hardware.onednn_allows('AVX512_CORE_BF16')
  monkeypatch.setenv(hardware.ONEDNN_ISA_ENV, 'ALL')
  assert hardware.onednn_isa_cap() is None


def test_prefer_onednn_respects_the_user_and_a_loaded_tensorflow(monkeypatch):
  monkeypatch.setenv(hardware.ONEDNN_ENV, '0')
  assert not hardware.prefer_onednn()  # the user chose
  assert hardware.onednn_requested() is False
  monkeypatch.delenv(hardware.ONEDNN_ENV)
  assert not hardware.prefer_onednn()  # TensorFlow is loaded: too late to matter
  assert hardware.ONEDNN_ENV not in __import__('os').environ
