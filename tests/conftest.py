"""Shared test setup: strictly offline, quiet, deterministic thread counts."""

from taskloom.environment import apply_local_env

apply_local_env()  # before any test imports torch or a Hugging Face library
