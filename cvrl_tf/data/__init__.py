"""Video data: records (schema), convert (video -> TFRecord), synthetic (demo dataset),
sampling (clip indices), augment (spatial ops), pipeline (tf.data builders)."""
