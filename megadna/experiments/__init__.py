"""Studies built on the library: tokenizer comparison, the tokenizer x masking ablation, benchmark helpers."""
