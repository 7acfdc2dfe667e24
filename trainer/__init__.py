"""Fine-tune artnote's ArtGPT-4 adapters on curated annotations.

Depends on `artnote`; nothing in `artnote` imports this package.
"""
