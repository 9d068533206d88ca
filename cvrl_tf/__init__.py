"""cvrl_tf: Contrastive Video Representation Learning (Qian et al., CVPR 2021) in tf_keras.

Shape conventions, written once: a clip is float32 [T, H, W, 3] in [0, 1]; a batch is
[B, T, H, W, 3]; a pretraining batch holds all view-1 clips then all view-2 clips.
"""

__version__ = '0.1.0'
