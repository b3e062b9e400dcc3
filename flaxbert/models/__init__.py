"""The models layer: BertConfig, the encoder, pretraining and task heads, the BERT2BERT
encoder-decoder, fused ops (GELU, dropout, cross-entropy) and generation. Imports nothing from
training, jobs or the command line."""
