"""Fixtures shared by several test modules, and the order `make test` runs the files in.

`make test` runs two pytest-xdist workers with --dist loadfile: a file's tests stay on
one worker, so a module fixture (a trained run, an export, subprocess jobs, a wheel
install) is built once, not once per worker. The files that take longest start first,
so the end of the run is not one long file on one worker while the other idles.
"""

import os
import tempfile

import pytest

# The test processes, and the Python subprocesses they start, run as every cvrl_* command
# does (cvrl_tf/cli/__init__.py, prefer_tf_keras): tf.keras is tf_keras, and TensorFlow's
# import skips Keras 3 and scikit-learn (~1.7 CPU-s a process, AMD EPYC Zen 4). The
# checks of what a user's own process does (hub_roundtrip_check.py, the wheel install)
# take the variable out again.
os.environ.setdefault('TF_USE_LEGACY_KERAS', '1')

from cvrl_tf.runtime import precision  # noqa: E402  pylint: disable=wrong-import-position


@pytest.fixture(scope='session', autouse=True)
def third_party_temporaries_under_basetemp(tmp_path_factory):
  """What libraries leave in the temporary directory (TFDS's tmp*tfds folders, Beam's
  beam-pipeline-temp*, AutoGraph's generated files: ~60 folders a run) goes under
  pytest's basetemp, of which pytest keeps the last three runs, instead of piling up in
  /tmp. The subprocesses the tests start inherit it through TMPDIR."""
  root = str(tmp_path_factory.mktemp('temporaries'))
  saved = os.environ.get('TMPDIR'), tempfile.tempdir
  os.environ['TMPDIR'], tempfile.tempdir = root, root
  yield
  if saved[0] is None:
    os.environ.pop('TMPDIR', None)
  else:
    os.environ['TMPDIR'] = saved[0]
  tempfile.tempdir = saved[1]


@pytest.fixture
def bf16_policy():
  """The tf_keras 'mixed_bfloat16' policy for one test; the previous policy restored."""
  with precision.dtype_policy('mixed_bfloat16'):
    yield


# Longest first, by each file's summed `pytest -n 2 --durations=0` on 2 cores of an AMD
# EPYC Zen 4 (2026-12-07: the quick demo ~105-125 s, Model Garden ~95, downstream ~75,
# bad examples ~65, ... wheel install ~22); the other files follow in their usual order.
SLOW_FILES = ('test_demo.py', 'test_model_garden.py', 'test_downstream.py',
              'test_bad_examples.py', 'test_train_cli.py', 'test_benchmarks.py',
              'test_strategy_cache.py', 'test_pipeline.py', 'test_export.py',
              'test_convert_beam.py', 'test_synthetic.py', 'test_quiet.py',
              'test_distribute.py', 'test_r3d.py', 'test_knn_monitor.py',
              'test_wheel_install.py', 'test_python_api.py')


def pytest_collection_modifyitems(items):
  def rank(item):
    name = item.path.name
    return SLOW_FILES.index(name) if name in SLOW_FILES else len(SLOW_FILES)
  items.sort(key=rank)  # Stable: each file's tests keep their order.
