"""Roles: which services a node runs.  Each module is what a twistd plugin loads lazily."""
