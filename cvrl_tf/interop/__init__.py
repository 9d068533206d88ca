"""Model Garden interop, in one place: model_garden.py (its R3D and ours: the unit-by-unit
mapping, the settings of its released experiments), checkpoint.py (what a Model Garden
checkpoint holds, read off its shapes), transfer.py (`cvrl_import`: its checkpoints in as
a cvrl_tf model dir, our backbone out as its checkpoint)."""
