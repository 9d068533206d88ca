"""cvrl_tf: Contrastive Video Representation Learning (Qian et al., CVPR 2021) in tf_keras.

Shape conventions, written once: a clip is float32 [T, H, W, 3] in [0, 1]; a batch is
[B, T, H, W, 3]; a pretraining batch holds all view-1 clips then all view-2 clips.

Reading order, one pretraining step from a TFRecord to the weight update:
  data/pipeline.py      build_pretrain_dataset: parse, sample two clips per video,
                        decode only their frames, augment (what it defers, the step does)
  data/batch.py         the batch contract: keys, the step/replica seed, finish_batch
  models/r3d.py         the R3D encoder (models/heads.py: the projection head)
  models/pretrainer.py  CVRLPretrainer: objective and train_step
  models/train_step.py  what every train step shares: weight decay, the replica
                        scaling of the gradients, metrics, XLA guard
  losses.py             InfoNCE over the global batch, with its derivation
The layout, by role:
  data/       TFRecords in and out: conversion, parsing, sampling, decoding, augmentation;
              tfds_source.py reads TensorFlow Datasets (`tfds:` sources) instead
  models/     Keras models: encoder, heads, the pretrainer and classifier train steps
  losses.py   the contrastive loss
  protocols/  what cvrl_train runs: pretrain.py, classify.py (linear eval, fine-tune,
              semi-supervised, evaluate), knn.py (knn_monitor.py: the same during
              pretraining); multiview.py, feature_cache.py and evaluation.py serve them
  runtime/    what runs any protocol: train_loop (checkpoints, resume, NaN guard), optim,
              distribute, precision (+ hardware), config (gin's read side)
  serving/    a trained encoder elsewhere: export.py (TF Hub SavedModel), embed.py
              (features per video or per window: windows.py; resumable: embed_store.py),
              model_garden.py (cvrl_import: Model Garden checkpoints in and out)
  cli/        every console script's flags and main; gin is parsed only here
  configs/    the gin files, shipped as package data (`--gin_file=pretrain.gin`)
  demo/       `make demo`
Imports run down LAYERS only (tests/test_layering.py checks every module): a package
imports its own layer and the ones before it, never one after.
"""

from cvrl_tf.runtime import hardware

__version__ = '0.1.0'

# Lowest first. errors/files/configs: plain helpers and shipped files; data: records in
# and out; runtime: what runs a protocol; losses, models: the network and its objective;
# protocols: what cvrl_train runs; serving: a trained encoder elsewhere; cli: the
# commands; demo: `make demo`, which drives the commands.
LAYERS = (('errors', 'files', 'configs', 'records', 'progress'), ('data',), ('runtime',), ('losses',),
          ('models',), ('protocols',), ('serving',), ('cli',), ('demo',))

# Before TensorFlow loads: its oneDNN kernels also on CPUs where its default leaves them
# off (AVX2-only x86: the demo's train step 32x faster, benchmarks/README.md). Opt out
# with TF_ENABLE_ONEDNN_OPTS=0.
hardware.prefer_onednn()
