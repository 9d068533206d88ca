#!/usr/bin/env python
"""`make demo`: the CVRL pipeline end to end on the embedded synthetic dataset.

  python tools/demo.py --out=demo_out [--ablations] [--quick]

Library code: cvrl_tf/demo/run.py (steps) and cvrl_tf/demo/report.py (table, plots).
"""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
# The report imports TensorFlow in this process: without its start-up info lines, as the
# tools the demo runs (the user's own level wins).
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
from cvrl_tf import cli  # noqa: E402  (no TensorFlow)
cli.prefer_tf_keras()  # As in the tools it runs: TensorFlow starts without Keras 3.
from cvrl_tf.demo import run as demo  # noqa: E402

if __name__ == '__main__':
  sys.exit(demo.main())
