"""Weights in and out: flaxbert, HF transformers and original TF1 BERT checkpoints (pretrained.py is
the front door: detect, load, save, convert), and BERT2BERT models to transformers' EncoderDecoderModel."""
