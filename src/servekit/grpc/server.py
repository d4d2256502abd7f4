"""The gRPC server: KServe v2 (with Triton's extensions), TF Serving's API and the
standard health service, in the HTTP server's process and on its event loop.

One ``grpc.aio`` server listens on ``grpc_port`` (8001 by default, as Triton) and
``tfs_grpc_port`` (8500, as TF Serving); each port serves every service, so a client
finds what it expects on its usual port. TLS, mutual TLS, API keys, the admin token and
the message size limit come from the same settings as HTTP's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from servekit.config import ServerSettings
from servekit.dataplane import DataPlane
from servekit.errors import Forbidden, ServekitError
from servekit.grpc import kserve, tfserving
from servekit.grpc.calls import Guard
from servekit.metrics import Metrics

log = logging.getLogger(__name__)


class Health(health.aio.HealthServicer):  # type: ignore[misc]
    """grpc.health.v1 (Kubernetes' gRPC probes): SERVING while every model due is ready
    and the server is not draining; the overall status and each service's are the same."""

    def __init__(self, ready: Callable[[], bool]) -> None:
        super().__init__()
        self._ready = ready

    async def Check(
        self, request: health_pb2.HealthCheckRequest, context: Any
    ) -> health_pb2.HealthCheckResponse:
        if request.service not in ("", kserve.SERVICE, *TFS_SERVICES):
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if self._ready()
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        return health_pb2.HealthCheckResponse(status=status)


TFS_SERVICES = ("tensorflow.serving.PredictionService", "tensorflow.serving.ModelService")


def _credentials(settings: ServerSettings) -> grpc.ServerCredentials | None:
    if settings.ssl_certfile is None or settings.ssl_keyfile is None:
        return None
    try:
        key = settings.ssl_keyfile.read_bytes()
        cert = settings.ssl_certfile.read_bytes()
        ca = settings.ssl_ca_certs.read_bytes() if settings.ssl_ca_certs else None
    except OSError as e:
        raise ServekitError(f"gRPC TLS: cannot read {e.filename}: {e.strerror}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)],
        root_certificates=ca,
        require_client_auth=settings.ssl_require_client_cert,
    )


class GrpcServer:
    """Owned by the HTTP app's lifespan: ``start`` after the models are loaded,
    ``stop`` at shutdown (in-flight calls get the drain timeout to finish)."""

    def __init__(
        self,
        plane: DataPlane,
        settings: ServerSettings,
        metrics: Metrics,
        draining: Callable[[], bool],
        *,
        several_processes: bool = False,
    ) -> None:
        self.settings = settings
        self.ports: dict[str, int] = {}
        self._several = several_processes
        guard = Guard(settings, metrics)

        async def load(name: str, override: dict[str, Any] | None) -> None:
            self._require_mutable()
            await plane.registry.load_model(name, override)

        async def unload(name: str) -> None:
            self._require_mutable()
            await plane.registry.unload_model(name)

        self.kserve = kserve.KServeServicer(
            plane, guard, draining=draining, load=load, unload=unload
        )
        self.health = Health(lambda: plane.ready() and not draining())
        self.guard = guard
        self.plane = plane
        self.draining = draining
        self._server: grpc.aio.Server | None = None

    def _require_mutable(self) -> None:
        if self.settings.model_control_mode == "none":
            raise Forbidden(
                "model control mode is 'none': start the server with --model-control-mode "
                "explicit (or poll) to load and unload models"
            )

    @property
    def wanted(self) -> dict[str, int]:
        ports = {"grpc": self.settings.grpc_port, "tfs_grpc": self.settings.tfs_grpc_port}
        return {name: port for name, port in ports.items() if port}

    async def start(self) -> None:
        if not self.wanted:
            return
        limit = self.settings.max_body_bytes
        server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", limit),
                # Several worker processes share the ports; one process must own them.
                ("grpc.so_reuseport", 1 if self._several else 0),
            ]
        )
        kserve.add_to_server(server, self.kserve)
        tfserving.add_to_server(server, tfserving.Servicer(self.plane, self.guard, self.draining))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        credentials = _credentials(self.settings)
        for name, port in self.wanted.items():
            host = self.settings.host
            address = (
                f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"
            )
            try:
                if credentials is None:
                    bound = server.add_insecure_port(address)
                else:
                    bound = server.add_secure_port(address, credentials)
            except RuntimeError as e:
                raise ServekitError(f"gRPC cannot listen on {address}: {e}") from None
            if not bound:
                raise ServekitError(f"gRPC cannot listen on {address} (in use?)")
            self.ports[name] = bound
        await server.start()
        self._server = server
        log.info(
            "gRPC listening on %s (%s)",
            ", ".join(f"{self.settings.host}:{p}" for p in self.ports.values()),
            "TLS" if credentials else "plaintext",
        )

    async def stop(self, grace_s: float) -> None:
        if self._server is not None:
            await self._server.stop(grace_s)
            self._server = None
