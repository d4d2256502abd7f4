#!/usr/bin/env python3
"""Docker HEALTHCHECK of servekit: exit 0 when GET /v2/health/ready answers 200.

Standard library only (slim images have no curl). Reads the address from SERVEKIT_HOST
and SERVEKIT_PORT, as servekit does; a wildcard address is checked on loopback. With
SERVEKIT_SSL_CERTFILE set the server speaks HTTPS: the check does too, on loopback,
without verifying the certificate (its name is the service's, not 127.0.0.1).
"""

import os
import ssl
import sys
import urllib.error
import urllib.request

LOOPBACK = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}


def main() -> int:
    host = os.environ.get("SERVEKIT_HOST", "127.0.0.1")
    host = LOOPBACK.get(host, host)
    if ":" in host:
        host = f"[{host}]"
    port = os.environ.get("SERVEKIT_PORT", "8000")
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]  # no proxy
    scheme = "http"
    if os.environ.get("SERVEKIT_SSL_CERTFILE"):
        scheme = "https"
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=context))
    url = f"{scheme}://{host}:{port}/v2/health/ready"
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(url, timeout=4) as response:
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as e:
        print(f"{url}: {e.code} {e.reason}")
    except OSError as e:
        print(f"{url}: {e}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
