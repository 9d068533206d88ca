"""cvrl_tf: Contrastive Video Representation Learning (Qian et al., CVPR 2021) in tf_keras.

Shape conventions, written once: a clip is float32 [T, H, W, 3] in [0, 1]; a batch is
[B, T, H, W, 3]; a pretraining batch holds all view-1 clips then all view-2 clips.

Reading order, one pretraining step from a TFRecord to the weight update:
  protocols/pretrain.py the recipe (Pretrain: every setting, its parts as typed objects)
                        and the protocol that hands each part to the code using it
  input/clips.py        what a pipeline makes of a video (PretrainClips, TrainClips,
                        TestViews): frames, crops, augmentation settings
  input/pipeline.py     build_pretrain_dataset: parse, sample two clips per video,
                        decode only their frames, augment (what it defers, the step does)
  input/batch.py        the batch contract: keys, the step/replica seed, finish_batch
  models/r3d.py         the R3D encoder (models/heads.py: the projection head)
  models/pretrainer.py  CVRLPretrainer: objective and train_step
  models/train_step.py  what every train step shares: weight decay, the replica
                        scaling of the gradients, metrics, XLA guard
  losses.py             InfoNCE over the global batch, with its derivation
The layout, by role:
  records.py  the record schema: the one module conversion and input share
  progress.py the progress stream every layer writes to
  convert/    video -> TFRecord, offline: sources, video_io (PyAV), shard_writer, the
              local pool and Apache Beam runners (convert.py, convert_beam.py), synthetic
  input/      TFRecord shards or TFDS splits -> batches, in tf.data: shards.py and
              tfds_source.py (`tfds:` sources), clips (the settings), sampling,
              augment, batch, pipeline; the
              bad-example guard (bad_examples.py, record_check.py); inspection.py
              (cvrl_inspect: records read the way training reads them)
  models/     Keras models: encoder, heads, the pretrainer and classifier train steps
  losses.py   the contrastive loss
  protocols/  what cvrl_train runs: pretrain.py, classify.py (linear eval, fine-tune,
              semi-supervised, evaluate), knn.py (knn_monitor.py: the same during
              pretraining); multiview.py, feature_cache.py, collection.py, metrics.py and
              reports.py serve them
  runtime/    what runs any protocol: train_loop (checkpoints, resume, NaN guard), optim,
              distribute, precision (+ hardware)
  serving/    a trained encoder elsewhere: export.py (TF Hub SavedModel), embed.py
              (features per video or per window: windows.py; resumable: embed_store.py)
  interop/    Model Garden, in one place: model_garden.py (its R3D and ours, the settings
              of its releases), checkpoint.py (a checkpoint's layout), transfer.py
              (cvrl_import: Model Garden checkpoints in and out)
  cli/        every console script's flags and main; gin lives only here: settings.py
              gives the settings objects their gin names and builds recipes from gin
  configs/    the gin files, shipped as package data (`--gin_file=pretrain.gin`)
  demo/       `make demo`
Imports run down LAYERS only (tests/test_layering.py checks every module): a package
imports its own layer and the ones before it, never one after.
"""

from cvrl_tf.runtime import hardware

__version__ = '0.1.0'

# Lowest first. errors/files/configs/records/progress: plain helpers, shipped files, the
# record schema and the progress stream; convert: video -> records (offline); input:
# records -> batches (tf.data; it imports nothing of convert); runtime: what runs a
# protocol; losses, models: the network and its objective; protocols: what cvrl_train
# runs; serving, interop: a trained encoder elsewhere (TF Hub, features, Model Garden);
# cli: the commands; demo: `make demo`, which drives the commands.
LAYERS = (('errors', 'files', 'configs', 'records', 'progress'), ('convert',), ('input',),
          ('runtime',), ('losses',), ('models',), ('protocols',), ('serving', 'interop'),
          ('cli',), ('demo',))

# Before TensorFlow loads: its oneDNN kernels also on CPUs where its default leaves them
# off (AVX2-only x86: the demo's train step 32x faster, benchmarks/README.md). Opt out
# with TF_ENABLE_ONEDNN_OPTS=0.
hardware.prefer_onednn()
