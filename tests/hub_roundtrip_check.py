"""Loads an export the way a user would, in a fresh interpreter, and embeds a saved input.

  python hub_roundtrip_check.py EXPORT_DIR CLIPS.npy OUT_PREFIX
writes OUT_PREFIX_call.npy (hub.KerasLayer) and OUT_PREFIX_serving.npy (serving_default).
Only tensorflow, tensorflow_hub and numpy are imported: the export must not need cvrl_tf
(or our Keras layer classes) to load. Run by tests/test_export.py.
"""

import sys

import numpy as np
import tensorflow as tf
import tensorflow_hub as hub


def main(export_dir: str, clips_path: str, out_prefix: str) -> None:
  clips = np.load(clips_path)
  layer = hub.KerasLayer(export_dir)
  np.save(out_prefix + '_call.npy', np.asarray(layer(clips)))
  serving = tf.saved_model.load(export_dir).signatures['serving_default']
  np.save(out_prefix + '_serving.npy', serving(clips=tf.constant(clips))['embedding'].numpy())
  leaked = sorted(m for m in sys.modules if m.split('.')[0] == 'cvrl_tf')
  if leaked:
    raise SystemExit(f'cvrl_tf modules were imported while loading: {leaked}')


if __name__ == '__main__':
  main(*sys.argv[1:4])
