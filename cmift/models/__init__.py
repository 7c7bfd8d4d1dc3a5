"""Models: backbones and tokenizers (hub, local, bundled, tiny), and students."""
