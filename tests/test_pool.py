"""pool.OrderedPool: order kept, a crashing call fails alone, a stalled call is killed
after its time limit and fails alone, in-process mode."""

import os
import time

from cvrl_tf.convert import pool


def _square_or_die(x):
  if x == 3:
    os._exit(7)  # like a decoder segfault: the worker process vanishes
  return x * x


def test_order_kept_and_a_crash_fails_only_its_call():
  with pool.OrderedPool(2, on_crash=lambda kw: ('crashed', kw['x']), window=3) as p:
    out = list(p.map(_square_or_die, [{'x': x} for x in range(8)]))
    assert out == [0, 1, 4, ('crashed', 3), 16, 25, 36, 49]
    assert list(p.map(_square_or_die, [{'x': 5}])) == [25]  # usable after a crash


def _square_or_stall(x):
  if x == 2:
    time.sleep(3600)  # like a read that never returns
  return x * x


def test_a_stalled_call_is_killed_after_the_limit_and_fails_alone():
  t0 = time.monotonic()
  with pool.OrderedPool(2, on_crash=lambda kw: 'crashed', window=3, timeout=2.0,
                        on_timeout=lambda kw: ('timeout', kw['x'])) as p:
    out = list(p.map(_square_or_stall, [{'x': x} for x in range(6)]))
    assert out == [0, 1, ('timeout', 2), 9, 16, 25]
    assert list(p.map(_square_or_stall, [{'x': 5}])) == [25]  # usable after a kill
  assert 2.0 <= time.monotonic() - t0 < 30  # stopped at the limit, not at 3600 s


def test_in_process_mode():
  p = pool.OrderedPool(0, on_crash=lambda kw: None)
  assert list(p.map(_square_or_die, [{'x': -2}, {'x': 4}])) == [4, 16]
  assert pool.default_workers() >= 1
