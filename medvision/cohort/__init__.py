"""Cohorts: from a spec and a folder of images to a versioned, pseudonymised manifest with splits and a cache.

The only layer that ever sees patient identifiers; everything above it receives pseudonyms.
"""
