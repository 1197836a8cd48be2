"""Fine-tuning on labelled data (GLUE or your own files), its task readers and metrics."""
