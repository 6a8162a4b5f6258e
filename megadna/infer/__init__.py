"""Using a trained model: sequence embeddings (`embed`), variant effect scores (`variants`), and what
both share (`inputs`: reading FASTA/CSV input, length-sorted batches, outputs renamed into place)."""
