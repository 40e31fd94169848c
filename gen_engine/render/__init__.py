"""Campaign rendering: prompt CSV in; images with metadata, manifests and a gallery out, in S3."""
