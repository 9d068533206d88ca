"""A trained encoder outside training: export.py writes a TF Hub SavedModel (with its
metadata and model card), embed.py extracts features of any video with one."""
