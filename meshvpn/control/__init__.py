"""Local status and control of a running node."""
