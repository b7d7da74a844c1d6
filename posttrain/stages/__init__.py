"""Stage kinds. Each module defines a config class and registers a run function."""
