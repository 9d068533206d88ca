"""What every training recipe holds: the data it trains on, how long, and how it runs.

A recipe is a frozen dataclass of a run's settings: plain fields, and its parts as typed
objects (clips, encoder, head, optimizer, ...) that the protocol hands to the code that
uses them. The protocol reads its settings from the recipe only; from Python, build one
and call `recipe.run(model_dir)`. `cvrl_train` builds recipes from gin (cli/settings.py:
`pretrain.train_steps = 10` sets a field of `Pretrain`, `pretrain_clips.crop_size = 32`
one of its clips). `TrainingRecipe` holds the fields every training protocol has;
`Schedule` is what its epochs come to in steps.
"""

import dataclasses
import math
from typing import Any, Callable, Optional

import tensorflow as tf
import tf_keras

from cvrl_tf import errors
from cvrl_tf import files as files_lib
from cvrl_tf import progress as progress_lib
from cvrl_tf.input import bad_examples as bad_examples_lib
from cvrl_tf.input import shards
from cvrl_tf.runtime import distribute
from cvrl_tf.runtime import precision
from cvrl_tf.runtime import train_loop

FilePatterns = shards.FilePatterns  # one definition: input/shards.py


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The step counts a recipe's epochs come to on `num_videos` videos."""
  num_videos: int
  total_steps: int
  warmup_steps: int


@dataclasses.dataclass(frozen=True)
class Opening:
  """What every protocol starts from: where it runs, in what precision, and where its
  progress lines go (None: quiet)."""
  strategy: tf.distribute.Strategy
  precision: precision.PrecisionChoice
  facts: precision.DeviceFacts
  progress_stream: Any


def open_protocol(recipe, protocol: str, progress_stream,
                  requested: Optional[Callable[[precision.DeviceFacts], str]] = None
                  ) -> Opening:
  """The one opening of the protocols: required fields checked, the strategy built
  (recipe.strategy), the devices' facts and the precision chosen (recipe.mixed_precision,
  or `requested(facts)`), the progress stream resolved. Run the protocol's work inside
  `precision.dtype_policy(opening.precision.policy)`."""
  check_required(recipe, protocol)
  seed_initialization(getattr(recipe, 'seed', None))
  progress_stream = progress_lib.resolve_stream(progress_stream)
  strategy = recipe.strategy.build()
  facts = precision.detect_devices(strategy)
  wanted = requested(facts) if requested else recipe.mixed_precision
  choice = precision.resolve(wanted, strategy, progress_stream, facts)
  return Opening(strategy, choice, facts, progress_stream)


def seed_initialization(seed: Optional[int]) -> None:
  """Seeds the generators the weights' initializers draw from (Python, NumPy and
  TensorFlow's global seed), so that a recipe's seed builds the same model: the same
  initial weights for the same seed, a random-init baseline that is one encoder per seed.
  Without it only the input stream followed the seed and two runs of one seed started
  from different weights. None leaves the generators as they are."""
  if seed is not None:
    tf_keras.utils.set_random_seed(int(seed))


def record_start(model_dir: str, recipe, protocol: str, opening: Opening) -> None:
  """The chief appends this start to run_info.json: the protocol, its precision and
  devices, and every setting of the recipe (what a Python run has instead of gin's
  operative_config.gin)."""
  if train_loop.is_chief(opening.strategy):
    precision.record(model_dir, opening.precision, protocol, opening.facts,
                     settings=files_lib.normalized(dataclasses.asdict(recipe)))


def check_required(recipe, protocol: str) -> None:
  """Every field the recipe class lists in REQUIRED is set; else one line naming it."""
  for name in getattr(recipe, 'REQUIRED', ()):
    if getattr(recipe, name) in (None, '', ()):
      raise errors.UserError(f'{protocol}.{name} is not set: give it (gin: --gin_bindings='
                             f'"{protocol}.{name}=...")')


@dataclasses.dataclass(frozen=True)
class TrainingRecipe:
  """Fields of every training protocol (subclasses set the paper's defaults).

  train_files: TFRecord pattern(s) written by cvrl_convert.
  num_train_examples: videos per epoch; counted from the shards when None.
  global_batch_size: videos per step over all replicas.
  train_epochs / train_steps: length; train_steps wins when given.
  warmup_epochs: linear warm-up of the learning rate, then cosine decay to 0.
  mixed_precision: 'auto' (chosen for the hardware, see runtime/precision.py),
    'float32', 'mixed_bfloat16' or 'mixed_float16' (dynamic loss scaling).
  jit_compile: XLA-compile the train step.
  checkpoint_every / keep_checkpoints / log_every: in steps.
  seed: seeds the weights' initialization (seed_initialization), the input stream's
    shuffle and sampling (with resume: seed + step; the order shards arrive in only with
    the clips' deterministic=True) and the augmentation deferred to the train step.
  strategy: where it runs (runtime/distribute.py).
  bad_examples: when unusable training videos stop the run (input/bad_examples.py).
  """
  REQUIRED = ('train_files',)  # Fields without a usable default (check_required).
  train_files: FilePatterns = None
  num_train_examples: Optional[int] = None
  global_batch_size: int = 128
  train_epochs: float = 50
  train_steps: Optional[int] = None
  warmup_epochs: float = 2
  mixed_precision: Optional[str] = 'auto'
  jit_compile: bool = False
  checkpoint_every: int = 1000
  keep_checkpoints: int = 3
  log_every: int = 100
  seed: Optional[int] = None
  strategy: distribute.StrategySpec = distribute.StrategySpec()
  bad_examples: bad_examples_lib.Limit = bad_examples_lib.Limit()

  def cadence(self, examples_per_step: int, example_name: str = 'clips'
              ) -> train_loop.Cadence:
    """How often the train loop writes, and what its rate counts."""
    return train_loop.Cadence(self.checkpoint_every, self.keep_checkpoints, self.log_every,
                              examples_per_step, example_name)

  def schedule(self, num_videos: int) -> Schedule:
    """Total and warm-up steps; an epoch is num_videos // global_batch_size steps."""
    batch = self.global_batch_size
    steps_per_epoch = max(1, num_videos // batch)
    total = self.train_steps or max(1, math.ceil(self.train_epochs * num_videos / batch))
    warmup = min(int(round(self.warmup_epochs * steps_per_epoch)), total)
    return Schedule(num_videos, total, warmup)
