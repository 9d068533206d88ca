"""cvrl_tf: Contrastive Video Representation Learning (Qian et al., CVPR 2021) in tf_keras.

Shape conventions, written once: a clip is float32 [T, H, W, 3] in [0, 1]; a batch is
[B, T, H, W, 3]; a pretraining batch holds all view-1 clips then all view-2 clips.
"""

from cvrl_tf import hardware

__version__ = '0.1.0'

# Before TensorFlow loads: its oneDNN kernels also on CPUs where its default leaves them
# off (AVX2-only x86: 27x faster train steps measured). TF_ENABLE_ONEDNN_OPTS=0 opts out.
hardware.prefer_onednn()
