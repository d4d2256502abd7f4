"""gRPC: KServe's Open Inference Protocol v2 (with Triton's extensions) and TF Serving's
API, on the HTTP server's event loop, through the same data plane."""
