#!/usr/bin/env python
"""Thin wrapper: same as the `cvrl_inspect` console script (works without installing)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))
from cvrl_tf import cli  # noqa: E402

if __name__ == '__main__':
  cli.cvrl_inspect()
