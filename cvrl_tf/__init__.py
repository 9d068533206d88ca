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
Around them: experiments.py (`pretrain`), downstream.py (the evaluation protocols),
train_loop.py (checkpoints, resume, NaN guard), precision.py (the precision for the
hardware), config.py (gin: the only module that reads bindings), export.py / embed.py.
"""

from cvrl_tf import hardware

__version__ = '0.1.0'

# Before TensorFlow loads: its oneDNN kernels also on CPUs where its default leaves them
# off (AVX2-only x86: the demo's train step 32x faster, benchmarks/README.md). Opt out
# with TF_ENABLE_ONEDNN_OPTS=0.
hardware.prefer_onednn()
