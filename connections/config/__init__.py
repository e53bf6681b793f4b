"""Configuration as code: apply_config and export_config's YAML."""
