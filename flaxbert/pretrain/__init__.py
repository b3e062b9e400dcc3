"""The pretraining job (masked LM + next-sentence prediction) and its input pipeline."""
