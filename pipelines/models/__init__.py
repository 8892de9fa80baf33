"""Model references: the built-in tiny SDXL, Hugging Face ids and local directories."""
