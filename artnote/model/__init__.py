"""The adapter-enhanced vision-language model (ArtGPT-4 adapters on Hugging Face VLMs)."""
