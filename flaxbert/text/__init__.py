"""Text: WordPiece and sentencepiece tokenization (the original BERT rules) and sentence splitting.
Imports no JAX, so data-preparation workers stay light."""
