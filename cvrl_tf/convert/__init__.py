"""Video -> TFRecord, offline: sources (listings, Kinetics CSV, class folders), video_io
(PyAV decode, resize, JPEG), shard_writer, the local pool and Apache Beam runners (convert,
convert_beam: the same per-video code), synthetic (the embedded demo dataset)."""
