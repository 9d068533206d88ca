"""What the input pipelines make of each video: the clips' settings, as typed objects.

Each builder of pipeline.py takes one of these (the protocol's recipe holds it):
  PretrainClips  two views per video at a random temporal interval (pretraining)
  TrainClips     one random clip per video (linear eval, fine-tuning)
  TestViews      num_clips x num_crops deterministic views per video (multi-view test,
                 k-NN, the online k-NN monitor)
T = clip_len frames, `stride` apart at `target_fps` (None: in stored frames, whatever
the record fps), S = crop_size pixels. Settings that are not the clips' own (the seed,
the label subset, the batch size) are the protocol's and come as the builders' other
arguments.
"""

import dataclasses
from typing import Optional, Sequence

from cvrl_tf.input import augment

DEFER_MODES = ('none', 'colour', 'resize')


@dataclasses.dataclass(frozen=True)
class _Decoded:
  """Fields of every training clip.

  defer: 'none', 'colour' or 'resize': the augmentation left to the train step
    (batch.finish_batch); 'resize' is the fastest input pipeline by far (pipeline.py).
  output_dtype: of CLIPS: 'float32' ([0, 1]) or 'uint8' ([0, 255]; 4x less memory).
  canvas: (Hc, Wc) of deferred crops, >= the stored frame size (256x456 fits 16:9 at
    short side 256; larger crops are shrunk about their centre to fit), for static
    shapes (TPU / XLA); None pads each batch to its largest crop only (least copying,
    any frame size; shapes vary by batch).
  shuffle_buffer: in videos; each holds its serialized record (a few MB) in memory.
  cycle_length: shards read at once.
  deterministic: the same batches for the same seed (slower: no out-of-order reads).
  validate_files: check every shard's header before reading (fails fast, names the file).
  augmentation: flip and colour settings, in tf.data and in the train step alike.
  """
  clip_len: int = 32
  stride: int = 2
  target_fps: Optional[float] = None
  crop_size: int = 224
  defer: str = 'none'
  output_dtype: str = 'float32'
  canvas: Optional[Sequence[int]] = (256, 456)
  shuffle_buffer: int = 128
  cycle_length: int = 16
  deterministic: bool = False
  validate_files: bool = True
  augmentation: augment.Augmentation = augment.Augmentation()

  def __post_init__(self):
    if self.defer not in DEFER_MODES:
      raise ValueError(f'defer must be one of {DEFER_MODES}, got {self.defer!r}')


@dataclasses.dataclass(frozen=True)
class PretrainClips(_Decoded):
  """Two views of each video (CVRL: 16 frames at stride 2, 224 crops).

  interval_family / interval_rate: the distribution of the interval between the two
    views (sampling.INTERVAL_FAMILIES; 'decreasing' is CVRL's).
  per_frame_augment: the temporally inconsistent ablation.
  """
  clip_len: int = 16
  interval_family: str = 'decreasing'
  interval_rate: float = 1.0
  per_frame_augment: bool = False


@dataclasses.dataclass(frozen=True)
class TrainClips(_Decoded):
  """One random clip of each video with its label (CVRL: 32 frames at stride 2, 224
  crops, random resized crop + flip). colour_augment adds view 1's colour and blur."""
  colour_augment: bool = False


@dataclasses.dataclass(frozen=True)
class TestViews:
  """Every video once, as num_clips evenly spaced clips x num_crops crops (CVRL: 10 x 3
  of 256 px, 32 frames at stride 2). Frames are resized so the short side is
  `min_resize`, then cropped crop_size x crop_size. need_label: a video without a label
  is skipped as bad (no accuracy without one)."""
  clip_len: int = 32
  stride: int = 2
  target_fps: Optional[float] = None
  num_clips: int = 10
  num_crops: int = 3
  min_resize: int = 256
  crop_size: int = 256
  output_dtype: str = 'float32'
  cycle_length: int = 4
  need_label: bool = True
  validate_files: bool = True

  def __post_init__(self):
    if self.crop_size > self.min_resize:
      raise ValueError(f'crop_size {self.crop_size} exceeds the resized short side '
                       f'{self.min_resize}')

  @property
  def views_per_video(self) -> int:
    return self.num_clips * self.num_crops
