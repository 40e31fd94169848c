"""Generator and discriminator networks, and the self-describing model artifact."""
