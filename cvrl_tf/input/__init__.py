"""TFRecord shards or TFDS splits -> batches, in tf.data: shards and tfds_source (listing,
reading), clips (what a pipeline makes of a video: the settings objects), sampling (clip
indices), augment (spatial ops and their settings), batch (the batch contract), pipeline
(the dataset builders), bad_examples and record_check (the bad-example guard), inspection
(what `cvrl_inspect` reports, read the way training reads)."""
