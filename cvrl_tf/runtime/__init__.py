"""What runs a protocol, whatever the protocol: the train loop (checkpoints, resume, NaN
guard), optimizers and schedules, the tf.distribute strategy, the precision for the
hardware (and the CPU facts it rests on), and gin's read side (`config`)."""
