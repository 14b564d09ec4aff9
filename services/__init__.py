"""Anting services: each is run (``anting serve NAME``), none imports another."""
