"""The `servekit` command. It only builds settings and hands them on."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import ssl
import sys
import threading
from logging.handlers import MemoryHandler
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
import uvicorn
from rich.table import Table

from servekit import __version__
from servekit.bench import bench as bench_command
from servekit.config import ModelConfig, ServerSettings, load_settings
from servekit.errors import ServekitError
from servekit.optimize.command import optimize as optimize_command
from servekit.server.httpserver import uvicorn_options
from servekit.terminal import console, fail, print_error

app = typer.Typer(
    name="servekit",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Help texts contain literal [brackets] (defaults, extras): no rich markup.
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        console.print(f"servekit {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    """Serve TFLite models as fast, batched, observable HTTP services.

    Examples:

      servekit serve                       # the bundled demo model on 127.0.0.1:8000

      servekit serve model.tflite --port 9000

      servekit serve ./models --host 0.0.0.0 --workers 2

      servekit inspect model.tflite
    """


def _settings_to_env(settings_json: dict[str, Any]) -> None:
    """Hand settings to the server process(es) as SERVEKIT_* variables (JSON for objects)."""
    for key, value in settings_json.items():
        if value is None:
            continue
        text = json.dumps(value) if isinstance(value, dict | list) else str(value)
        os.environ[f"SERVEKIT_{key.upper()}"] = text


APP_FACTORY = "servekit.server.app:create_app_from_env"


def _tls_options(settings: ServerSettings) -> dict[str, Any]:
    """uvicorn's TLS options: HTTPS when a certificate is set; client certificates
    verified against ssl_ca_certs (required with ssl_require_client_cert: mutual TLS)."""
    if settings.ssl_certfile is None:
        return {}
    opts: dict[str, Any] = {
        "ssl_certfile": str(settings.ssl_certfile),
        "ssl_keyfile": str(settings.ssl_keyfile),
    }
    if settings.ssl_ca_certs is not None:
        opts["ssl_ca_certs"] = str(settings.ssl_ca_certs)
        opts["ssl_cert_reqs"] = (
            ssl.CERT_REQUIRED if settings.ssl_require_client_cert else ssl.CERT_OPTIONAL
        )
    return opts


def _check_tls(settings: ServerSettings) -> None:
    """Load the certificate, key and CA bundle as uvicorn will, so that a missing file or
    a key that does not match its certificate fails here, in one line."""
    if settings.ssl_certfile is None:
        return
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(settings.ssl_certfile), str(settings.ssl_keyfile))
    except (OSError, ssl.SSLError) as e:
        fail(
            f"cannot use TLS certificate {settings.ssl_certfile} with key "
            f"{settings.ssl_keyfile}: {_reason(e)}"
        )
    if settings.ssl_ca_certs is not None:
        try:
            context.load_verify_locations(str(settings.ssl_ca_certs))
        except (OSError, ssl.SSLError) as e:
            fail(f"cannot use CA bundle {settings.ssl_ca_certs}: {_reason(e)}")


def _reason(e: OSError) -> str:
    """What an OSError or ssl.SSLError says, without its number."""
    return str(e.strerror or e.reason if isinstance(e, ssl.SSLError) else e.strerror or e)


def _check_port(host: str, port: int, what: str = "") -> None:
    """Bind the address once, as the server will, so a port in use fails here in one
    line. (Another process could take it in between: then the server's error says so.)"""
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError as e:
            fail(f"{what}cannot listen on {host}:{port}: {e.strerror or e}")


class _StartupLog:
    """Holds the log records written while the server starts: written out once the app
    has started (``release``), dropped if start-up fails, so that a quick failure is
    the one line the command prints, as for every other command. A start-up longer
    than ``hold_s`` (many or large models) shows its log from then on, as it goes."""

    def __init__(self, hold_s: float = 5.0) -> None:
        self.held: list[tuple[logging.Logger, logging.Handler, MemoryHandler]] = []
        self.lock = threading.Lock()
        self.timer = threading.Timer(hold_s, self.release)
        self.timer.daemon = True

    def __enter__(self) -> _StartupLog:
        loggers = [logging.getLogger()] + [
            lg
            for lg in logging.getLogger().manager.loggerDict.values()
            if isinstance(lg, logging.Logger)
        ]
        for logger in loggers:
            for handler in list(logger.handlers):
                memory = MemoryHandler(100_000, flushLevel=logging.CRITICAL + 1, target=handler)
                memory.setLevel(handler.level)
                logger.removeHandler(handler)
                logger.addHandler(memory)
                self.held.append((logger, handler, memory))
        self.timer.start()
        return self

    def release(self) -> None:
        """Write what was held, and log directly from now on."""
        self._restore(flush=True)

    def _restore(self, flush: bool) -> None:
        self.timer.cancel()
        with self.lock:
            held, self.held = self.held, []
            for logger, handler, memory in held:
                logger.removeHandler(memory)
                logger.addHandler(handler)
            if flush:  # in the order they were written, whichever logger wrote them
                records = [(r, handler) for _, handler, memory in held for r in memory.buffer]
                for record, handler in sorted(records, key=lambda rh: rh[0].created):
                    if record.levelno >= handler.level:
                        handler.handle(record)

    def __exit__(self, *exc_info: object) -> None:
        self._restore(flush=False)


class _DrainingServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful shutdown, so the process dies of the
    signal (exit -15). A drained shutdown is a success for servekit: exit 0.

    So the signal handler only asks for the shutdown, through uvicorn's public
    ``should_exit`` and ``force_exit`` (a second Ctrl-C forces it, as in uvicorn), and
    keeps no signal to re-raise."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self.should_exit and sig == signal.SIGINT:
            self.force_exit = True
        else:
            self.should_exit = True


def _worker_count(workers: str) -> int:
    """``--workers``: a positive number, or 'auto' (one per usable CPU)."""
    if workers == "auto":
        from servekit.cpus import usable_cpus

        return usable_cpus()
    try:
        count = int(workers)
    except ValueError:
        count = 0
    if count < 1:
        fail(f"--workers must be a positive number or 'auto', got {workers!r}")
    return count


@app.command()
def serve(
    model_path: Annotated[
        Path | None,
        typer.Argument(
            help="A .tflite file or a model repository (<repo>/<model>/<version>/model.tflite). "
            "Omit it to serve the bundled demo model."
        ),
    ] = None,
    host: Annotated[
        str | None, typer.Option(help="Address to listen on [default: 127.0.0.1].")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on [default: 8000].")] = None,
    grpc_port: Annotated[
        int | None,
        typer.Option(help="KServe v2 gRPC port, as Triton's; 0 disables [default: 8001]."),
    ] = None,
    tfs_grpc_port: Annotated[
        int | None,
        typer.Option(help="TF Serving gRPC port, as TF Serving's; 0 disables [default: 8500]."),
    ] = None,
    config: Annotated[
        Path | None,
        typer.Option("--config", "-c", help="Server settings YAML (see configs/server.yaml)."),
    ] = None,
    workers: Annotated[
        str,
        typer.Option(
            help="Server processes, each loading every model and sizing its models for its "
            "share of the CPUs; 'auto': one per usable CPU (affinity and cgroup quota).",
        ),
    ] = "1",
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning or error.")] = None,
    model_control_mode: Annotated[
        str | None,
        typer.Option(
            help="none (load all, no changes), poll (rescan the repository) or explicit "
            "(only the management API loads) [default: none]."
        ),
    ] = None,
    poll_interval: Annotated[
        float | None, typer.Option(help="Seconds between repository scans in poll mode.")
    ] = None,
    load_model: Annotated[
        list[str] | None,
        typer.Option(
            "--load-model",
            help="In explicit mode: a model to load at start (repeat); '*' loads every model.",
        ),
    ] = None,
    strict_readiness: Annotated[
        bool | None,
        typer.Option(
            "--strict-readiness/--no-strict-readiness",
            help="Ready only when every model is ready [default: off: ready once the "
            "models that loaded serve].",
            show_default=False,
        ),
    ] = None,
    exit_on_error: Annotated[
        bool | None,
        typer.Option(
            "--exit-on-error/--no-exit-on-error",
            help="Fail start-up if any model fails to load [default: off].",
            show_default=False,
        ),
    ] = None,
    drain_timeout: Annotated[
        float | None,
        typer.Option(help="Seconds to finish accepted requests at shutdown [default: 30].", min=0),
    ] = None,
    timeout_keep_alive: Annotated[
        float | None,
        typer.Option(
            help="Seconds an idle keep-alive connection stays open; keep it above the idle "
            "timeout of a load balancer in front [default: 75].",
        ),
    ] = None,
    header_timeout: Annotated[
        float | None,
        typer.Option(
            help="Seconds a request head may take from its first byte, 408 after [default: 30]."
        ),
    ] = None,
    max_header_bytes: Annotated[
        int | None,
        typer.Option(help="Request header section in bytes at most, 431 above [default: 65536]."),
    ] = None,
    max_header_count: Annotated[
        int | None,
        typer.Option(help="Request header fields at most, 431 above [default: 100]."),
    ] = None,
    max_url_bytes: Annotated[
        int | None,
        typer.Option(help="Request target in bytes at most, 414 above [default: 8192]."),
    ] = None,
) -> None:
    """Serve a model (or the bundled demo) over HTTP and gRPC.

    Settings come from, highest first: these flags, SERVEKIT_* environment variables,
    the --config YAML file, then defaults.

    Examples:

      servekit serve

      servekit serve model.tflite --port 9000

      SERVEKIT_DEFAULT_MODEL_CONFIG='{"max_batch_size": 64}' servekit serve ./models

      SERVEKIT_ADMIN_TOKEN=secret servekit serve ./models --model-control-mode poll
    """
    try:
        settings = load_settings(
            config,
            model_path=model_path,
            host=host,
            port=port,
            grpc_port=grpc_port,
            tfs_grpc_port=tfs_grpc_port,
            log_level=log_level,
            model_control_mode=model_control_mode,
            poll_interval_s=poll_interval,
            load_models=load_model or None,
            strict_readiness=strict_readiness,
            exit_on_error=exit_on_error,
            drain_timeout_s=drain_timeout,
            timeout_keep_alive_s=timeout_keep_alive,
            header_timeout_s=header_timeout,
            max_header_bytes=max_header_bytes,
            max_header_count=max_header_count,
            max_url_bytes=max_url_bytes,
        )
        if settings.model_path is not None:
            from servekit.repository import scan

            scan(settings.model_path)  # fail here, in one line, on a bad path
    except ServekitError as e:
        fail(str(e))
    _check_tls(settings)
    _check_port(settings.host, settings.port)
    _check_port(settings.host, settings.grpc_port, "gRPC ")
    _check_port(settings.host, settings.tfs_grpc_port, "TF Serving gRPC ")
    env = settings.model_dump(
        mode="json", exclude_defaults=True, exclude={"admin_token", "api_keys"}
    )
    if settings.admin_token is not None:  # model_dump masks secrets
        env["admin_token"] = settings.admin_token.get_secret_value()
    if settings.api_keys:
        env["api_keys"] = [k.get_secret_value() for k in settings.api_keys]
    _settings_to_env(env)
    logging.basicConfig(
        level=settings.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    config_kwargs: dict[str, Any] = {
        "factory": True,
        "host": settings.host,
        "port": settings.port,
        "log_level": settings.log_level,
        "access_log": settings.access_log,
        **uvicorn_options(settings),
        **_tls_options(settings),
    }
    processes = _worker_count(workers)
    if processes > 1:
        from servekit.cpus import WORKERS_ENV
        from servekit.server.monitoring import multiprocess_metrics, serve_metrics_port

        os.environ[WORKERS_ENV] = str(processes)  # each worker sizes its models for its share

        # Set before the workers start: each records into files there, /metrics sums them.
        with multiprocess_metrics():
            if settings.metrics_port is not None:  # the parent serves the sum of all workers
                serve_metrics_port(settings.host, settings.metrics_port, None)
            uvicorn.run(APP_FACTORY, workers=processes, **config_kwargs)
    else:
        # The app is made here (from the same settings the factory would read), so
        # that a failed start-up can be told in one line, by this command.
        from servekit.server.app import create_app

        config_kwargs["factory"] = False
        served = create_app(settings)
        served.report_startup_failure = False
        server = _DrainingServer(uvicorn.Config(served, **config_kwargs))
        with _StartupLog() as startup_log:
            served.on_started = startup_log.release
            with contextlib.suppress(SystemExit):  # uvicorn exits on a failed start-up
                server.run()
        if not server.started:
            if served.startup_error is None:  # not the app's start-up: show what was said
                startup_log.release()
            fail(f"servekit did not start: {served.startup_error or 'see the log above'}")


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="A model file (.tflite, .onnx).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print a model's inputs and outputs (name, dtype, shape, quantization).

    Example:

      servekit inspect model.tflite
    """
    import platform

    from servekit.runtime import backend_for_file

    try:
        backend = backend_for_file(model)
        sig = backend.load(backend.read(model), ModelConfig()).signature
    except ServekitError as e:
        fail(str(e))
    runtime = backend.runtime_name()
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "platform": backend.platform,
                    "runtime": runtime,
                    "machine": platform.machine(),
                    "signature": sig.signature_key,
                    "inputs": [s.to_dict() for s in sig.inputs],
                    "outputs": [s.to_dict() for s in sig.outputs],
                }
            )
        )
        return
    table = Table(
        title=f"{model.name} (signature: {sig.signature_key or 'none'}, "
        f"runtime: {runtime} on {platform.machine()})"
    )
    for col in ("kind", "name", "datatype", "shape", "quantization"):
        table.add_column(col)
    for kind, specs in (("input", sig.inputs), ("output", sig.outputs)):
        for s in specs:
            q = (
                f"scale={s.quantization.scale:.6g} zero_point={s.quantization.zero_point}"
                if s.quantization
                else ""
            )
            table.add_row(kind, s.name, s.datatype, str(list(s.shape)), q)
    console.print(table)


app.command()(optimize_command)
app.command()(bench_command)


def main() -> None:
    # Typer bundles its own click; TyperException is the public base of its errors.
    try:
        code = app(standalone_mode=False)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        sys.exit(130)
    except typer.TyperException as e:
        ctx = getattr(e, "ctx", None)
        if type(e).__name__ == "NoArgsIsHelpError" and ctx is not None:
            console.print(ctx.get_help(), highlight=False)
            sys.exit(0)
        # Usage errors: one line, not a box.
        message = e.format_message() if hasattr(e, "format_message") else str(e)
        print_error(message)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)
