"""Protocols from plain Python objects, no gin: the README's example, at toy size
(pretraining, then k-NN on its encoder; linear eval and fine-tuning take the same objects,
tests/test_downstream.py runs them).

The recipe's parts go where they are used, and what the run stores says so: the encoder
spec is backbone.json, the clips are training.json, the views are the k-NN results'.
gin's config stays empty throughout (nothing below cli/ reads it; test_layering.py
checks that nothing below cli/ even imports it).
"""

import dataclasses
import json
import os

import gin
import numpy as np

from cvrl_tf.input import augment
from cvrl_tf.input import clips
from cvrl_tf.models import heads
from cvrl_tf.models import r3d
from cvrl_tf.protocols import knn
from cvrl_tf.protocols import pretrain
from test_strategy_cache import _write_records  # pylint: disable=g-bad-import-order


def test_pretrain_then_knn_without_gin(tmp_path):
  gin.clear_config()
  train, test = _write_records(str(tmp_path))  # 8 train, 4 test videos, 2 classes
  encoder = r3d.EncoderSpec(name='r3d18', width_multiplier=0.125)
  views = clips.TestViews(clip_len=4, num_clips=1, num_crops=1, min_resize=32, crop_size=32)
  recipe = pretrain.Pretrain(
      train_files=train, global_batch_size=4, train_steps=2, warmup_epochs=0,
      mixed_precision='float32', seed=0,
      clips=clips.PretrainClips(clip_len=4, crop_size=32, shuffle_buffer=8,
                                augmentation=augment.Augmentation(flip_prob=0.0)),
      encoder=encoder, head=heads.HeadSpec(num_hidden_layers=1, hidden_dim=16,
                                           output_dim=8))
  run = str(tmp_path / 'cvrl')
  logs = recipe.run(run, progress_stream=None)
  assert np.isfinite(logs['loss'])
  stored = json.load(open(os.path.join(run, 'backbone', 'backbone.json')))
  assert {k: stored[k] for k in ('name', 'width_multiplier')} == {'name': 'r3d18',
                                                                 'width_multiplier': 0.125}
  assert json.load(open(os.path.join(run, 'backbone', 'training.json'))) == {
      'num_frames': 4, 'frame_stride': 2, 'target_fps': None, 'crop_size': 32}
  assert json.load(open(os.path.join(run, 'backbone', 'head.json')))['hidden_dim'] == 16

  result = knn.KnnEval(train_files=train, test_files=test, pretrain_dir=run, ks=(1,),
                       eval_batch_size=2, test_views=views,
                       memory_views=dataclasses.replace(views, num_clips=2)).run(
                           str(tmp_path / 'knn'), progress_stream=None)
  assert result['views']['memory']['num_clips'] == 2
  assert result['views']['test']['num_clips'] == 1
  assert gin.config_str() == ''  # Nothing was bound, nothing was asked.
  # cvrl_train writes operative_config.gin; a Python run records its settings in
  # run_info.json, with each start.
  assert not os.path.exists(os.path.join(run, 'operative_config.gin'))
  start = json.load(open(os.path.join(run, 'run_info.json')))['starts'][-1]
  assert start['protocol'] == 'pretrain'
  assert start['settings']['encoder'] == json.loads(json.dumps(dataclasses.asdict(encoder)))
