"""Recipes built the way `cvrl_train` builds them, for tests written as gin text.

`recipe('linear_eval', train_files=...)`: the recipe from the gin config parsed now (its
parts too: clips, views, encoder, ...), with the given fields replaced. Tests that show
the plain-Python way build the dataclasses themselves instead (test_python_api.py).
"""

import dataclasses

from cvrl_tf.cli import settings


def recipe(protocol: str, **fields):
  return dataclasses.replace(settings.build_recipe(protocol), **fields)
