"""taskloom: turn a task (a description and a dataset) into a served, watched, self-healing model."""

__version__ = "0.1.0"
