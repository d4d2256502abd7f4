"""Keras / SavedModel → TFLite conversion, quantization and verification.

TensorFlow is an optional extra (``pip install '.[optimize]'`` in a checkout), imported only
when a conversion runs.
"""
