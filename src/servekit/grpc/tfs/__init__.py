"""servekit's TF Serving messages (``tfserving.proto`` and its generated module):
TF Serving's wire format, in a package of servekit's own. See README.md here."""
