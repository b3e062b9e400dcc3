"""The training machinery every job shares: train state, the one train step, the one training
loop, checkpoints, sharding, optimizers, metrics, batching and sequence packing."""
