"""Keras / SavedModel → TFLite conversion, quantization and verification.

TensorFlow is an optional extra (``pip install 'servekit[optimize]'``), imported only
when a conversion runs.
"""
