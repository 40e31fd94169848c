"""Dataset readers, the synthetic captioned-shapes generator, and curation."""
