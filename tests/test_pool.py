"""pool.OrderedPool: order kept, a crashing call fails alone, in-process mode."""

import os

from cvrl_tf.data import pool


def _square_or_die(x):
  if x == 3:
    os._exit(7)  # like a decoder segfault: the worker process vanishes
  return x * x


def test_order_kept_and_a_crash_fails_only_its_call():
  with pool.OrderedPool(2, on_crash=lambda kw: ('crashed', kw['x']), window=3) as p:
    out = list(p.map(_square_or_die, [{'x': x} for x in range(8)]))
    assert out == [0, 1, 4, ('crashed', 3), 16, 25, 36, 49]
    assert list(p.map(_square_or_die, [{'x': 5}])) == [25]  # usable after a crash


def test_in_process_mode():
  p = pool.OrderedPool(0, on_crash=lambda kw: None)
  assert list(p.map(_square_or_die, [{'x': -2}, {'x': 4}])) == [4, 16]
  assert pool.default_workers() >= 1
