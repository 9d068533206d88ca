"""The batch contract: what the input pipelines yield and the train steps read.

Every batch is a dict; its keys are the constants below, so a producer and a consumer
cannot drift apart by a typo. Shapes per replica (N clips, T frames, crop size S):

  CLIPS        [N, T, S, S, 3] clips, uint8 in [0, 255] or float32 in [0, 1]; fully
               augmented, or before colour / blur when COLOUR_VIEW is present.
  CROPS        uint8 [N, T, Hc, Wc, 3] decoded crops, each top-left on a zero canvas,
               not yet resized or flipped (the pipeline's defer='resize'); instead of
               CLIPS, with
    CROP_HW    int32 [N, 2] each crop's (h, w) on the canvas, and
    FLIP       bool [N] whether to mirror it;
               per-frame ablation: CROP_HW [N, T, 2], FLIP [N, T].
  COLOUR_VIEW  int32 [N] (per clip) or [N, T] (per frame): the colour / blur ops are
               still to do, with the probabilities of view 1 or 2 (augment.VIEW_PROBS).
  VIEW1, VIEW2 deferred pretraining batches: {VIEW1: {...}, VIEW2: {...}}, each a dict
               of the keys above for the same B videos in the same order.
  LABEL        int64 [N] class index (classification and evaluation batches).
  FEATURES     float32 [N, D] encoder outputs from a feature cache (feature_cache.py),
               with LABEL, instead of clips: the linear head trains on them.

Pretraining batches hold 2B clips, view 1 of B videos then view 2 of the same videos
(pipeline.build_pretrain_dataset); classification batches hold B clips plus LABEL.
`finish_batch` turns any of them into the model input, float32 [N, T, S, S, 3] in
[0, 1], inside the train step, seeded by `step_seed`.

Evaluation batches (pipeline.build_eval_dataset, read by protocols/collection.py) carry one view
of a video per row: CLIPS, LABEL, VIDEO_INDEX int64 [N] (unique across input
pipelines), VIEW_INDEX int32 [N] (clip * num_crops + crop) and MEDIA_ID string [N].
"""

from typing import Dict, Optional

import tensorflow as tf

from cvrl_tf.input import augment

CLIPS = 'clips'
CROPS = 'crops'
CROP_HW = 'crop_hw'
FLIP = 'flip'
COLOUR_VIEW = 'colour_view'
VIEW1 = 'view1'
VIEW2 = 'view2'
LABEL = 'label'
FEATURES = 'features'
VIDEO_INDEX = 'video_index'
VIEW_INDEX = 'view_index'
MEDIA_ID = 'media_id'


def step_seed(base_seed: int, step: tf.Tensor,
              replica_context: Optional[tf.distribute.ReplicaContext]) -> tf.Tensor:
  """int64 [2] seed of the augmentation finished in a train step: (base_seed,
  step * replicas + replica).

  Different on every replica and step, and reproducible from the optimizer step alone,
  so a resumed run augments as the uninterrupted one would. replica_context: that of
  the step (tf.distribute.get_replica_context()); None counts as one replica.
  """
  ctx = replica_context
  replica = 0 if ctx is None else ctx.replica_id_in_sync_group
  replicas = 1 if ctx is None else ctx.num_replicas_in_sync
  step = tf.cast(step, tf.int64)
  return tf.stack([tf.constant(base_seed, tf.int64),
                   step * replicas + tf.cast(replica, tf.int64)])


@tf.autograph.experimental.do_not_convert  # Explicit tf.cond / map_fn only.
def finish_batch(batch: Dict[str, tf.Tensor], seed: tf.Tensor,
                 crop_size: Optional[int] = None,
                 settings: augment.Augmentation = augment.Augmentation()) -> tf.Tensor:
  """Whatever augmentation the pipeline deferred, read off the batch keys.

  Call it in the train step on every batch of build_pretrain_dataset or
  build_classification_dataset, whatever their `defer` setting:
    CLIPS                  clips done up to colour -> float32
    CROPS, CROP_HW, FLIP   resize + flip here (needs crop_size)
    COLOUR_VIEW            colour / blur here, per clip (or per frame) view
    VIEW1, VIEW2           deferred pretraining views: each finished, then
                           concatenated (view 1 then view 2)
  settings: the colour settings (those of the pipeline's clips).
  Returns float32 [N, T, S, S, 3] in [0, 1], the model input.
  """
  if VIEW1 in batch:
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    return tf.concat([finish_batch(batch[VIEW1], seeds[0], crop_size, settings),
                      finish_batch(batch[VIEW2], seeds[1], crop_size, settings)], axis=0)
  if CROPS in batch:
    if crop_size is None:
      raise ValueError('this batch has deferred crops: pass crop_size to finish_batch')
    clips = augment.resize_crops(batch[CROPS], batch[CROP_HW], batch[FLIP], crop_size)
  else:
    clips = augment.to_float(batch[CLIPS])
  if COLOUR_VIEW in batch:
    view = tf.convert_to_tensor(batch[COLOUR_VIEW])
    clips = augment.augment_batch_colour_blur(clips, view, seed,
                                              per_frame=view.shape.rank == 2,
                                              settings=settings)
  return clips
