"""Flower classifier: label sets, image decoding, preprocessing, model bundles and serving.

Importing this package or its submodules imports no torch, except
`classifier.model` and `classifier.backends.torch_backend`.
"""
