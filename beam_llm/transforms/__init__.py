"""One module per YAML transform; its signature is its config schema."""
