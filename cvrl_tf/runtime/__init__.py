"""What runs a protocol, whatever the protocol: the train loop (checkpoints, resume, NaN
guard), optimizers and schedules, the tf.distribute strategy, and the precision for the
hardware (and the CPU facts it rests on)."""
