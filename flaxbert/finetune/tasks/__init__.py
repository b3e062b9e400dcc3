"""Fine-tuning task families behind one protocol (base.py), listed once (registry.py): the encoder
families share encoder.py (classification, ner, qa, similarity, extractive); seq2seq.py is BERT2BERT.
The other modules read files (readers, glue_tsv, tfds_source, parallel, squad, summarization),
lay out inputs (layout) and score (scores, squad_post)."""
