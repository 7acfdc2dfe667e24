"""artnote: describe museum collections with an adapter-enhanced vision-language model."""

__version__ = "0.1.0"
