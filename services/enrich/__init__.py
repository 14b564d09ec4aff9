"""The enrich service."""
