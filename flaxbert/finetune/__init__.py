"""The fine-tuning job (train, evaluate, predict, generate), the paper's sweep and sentence
embeddings; task families live in flaxbert.finetune.tasks."""
