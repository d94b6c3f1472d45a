"""Process configuration: the settings read from the environment (`settings`)."""
