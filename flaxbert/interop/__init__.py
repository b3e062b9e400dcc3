"""Weight conversion between flaxbert, HF transformers and original TF1 BERT checkpoints."""
