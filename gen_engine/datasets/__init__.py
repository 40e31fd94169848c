"""Dataset readers, the starter artwork builder, the synthetic captioned-shapes generator, and curation."""
