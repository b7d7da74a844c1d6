"""The bottom layer: config base classes and runtime helpers every other package may import.

Nothing here imports another posttrain package except :mod:`posttrain.errors`.
"""
