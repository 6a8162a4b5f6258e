"""Using a trained model: sequence embeddings (`embed`, which also owns the tiling of long sequences
into windows), predictions of a saved fine-tuned classifier (`predict`), variant effect scores
(`variants`), and what they share (`inputs`: reading FASTA/CSV input, length-sorted batches, outputs
renamed into place)."""
