"""Runs a resolved recipe's stages in order, with caching, resume and a manifest."""
