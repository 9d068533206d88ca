"""What every training recipe holds: the data it trains on, how long, and how it runs.

A recipe is a frozen dataclass of a run's settings, registered in gin under its
protocol's name (`pretrain.train_steps = 10` sets a field of `Pretrain`); the protocol
reads its settings from the recipe only. `TrainingRecipe` holds the fields every
training protocol has; `Schedule` is what its epochs come to in steps.
"""

import dataclasses
import math
from typing import Optional

import gin

from cvrl_tf.input import shards

FilePatterns = shards.FilePatterns  # one definition: input/shards.py


@dataclasses.dataclass(frozen=True)
class Schedule:
  """The step counts a recipe's epochs come to on `num_videos` videos."""
  num_videos: int
  total_steps: int
  warmup_steps: int


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
  seed: makes the input stream deterministic (with resume: seed + step) and seeds the
    augmentation deferred to the train step.
  """
  train_files: FilePatterns = gin.REQUIRED
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

  def schedule(self, num_videos: int) -> Schedule:
    """Total and warm-up steps; an epoch is num_videos // global_batch_size steps."""
    batch = self.global_batch_size
    steps_per_epoch = max(1, num_videos // batch)
    total = self.train_steps or max(1, math.ceil(self.train_epochs * num_videos / batch))
    warmup = min(int(round(self.warmup_epochs * steps_per_epoch)), total)
    return Schedule(num_videos, total, warmup)
