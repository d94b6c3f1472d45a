"""Process configuration: settings from the environment and the one broker factory."""
