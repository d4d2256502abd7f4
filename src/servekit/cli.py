"""The `servekit` command. It only builds settings and hands them on."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated, Any

import typer
import uvicorn
from rich.table import Table

from servekit import __version__
from servekit.bench import bench as bench_command
from servekit.config import ModelConfig, ServerSettings, load_settings
from servekit.errors import ServekitError
from servekit.optimize.command import optimize as optimize_command
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


class _DrainingServer(uvicorn.Server):
    """uvicorn re-raises SIGTERM after a graceful shutdown, so the process dies of the
    signal (exit -15). A drained shutdown is a success for servekit: exit 0."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


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
        int, typer.Option(min=1, help="Server processes (each loads every model).")
    ] = 1,
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
        )
        if settings.model_path is not None:
            from servekit.repository import scan

            scan(settings.model_path)  # fail here, in one line, on a bad path
    except ServekitError as e:
        fail(str(e))
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
        "timeout_graceful_shutdown": int(settings.drain_timeout_s) or None,
        "access_log": settings.access_log,
        **_tls_options(settings),
    }
    if workers > 1:
        from servekit.server.monitoring import multiprocess_metrics, serve_metrics_port

        # Set before the workers start: each records into files there, /metrics sums them.
        with multiprocess_metrics():
            if settings.metrics_port is not None:  # the parent serves the sum of all workers
                serve_metrics_port(settings.host, settings.metrics_port, None)
            uvicorn.run(APP_FACTORY, workers=workers, **config_kwargs)
    else:
        server = _DrainingServer(uvicorn.Config(APP_FACTORY, **config_kwargs))
        server.run()
        if not server.started:
            raise typer.Exit(3)


@app.command()
def inspect(
    model: Annotated[Path, typer.Argument(help="A model file (.tflite, .onnx).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
) -> None:
    """Print a model's inputs and outputs (name, dtype, shape, quantization).

    Example:

      servekit inspect model.tflite
    """
    from servekit.runtime import backend_for_file

    try:
        backend = backend_for_file(model)
        sig = backend.load(backend.read(model), ModelConfig()).signature
    except ServekitError as e:
        fail(str(e))
    if as_json:
        console.print_json(
            json.dumps(
                {
                    "platform": backend.platform,
                    "runtime": backend.runtime_name(),
                    "signature": sig.signature_key,
                    "inputs": [s.to_dict() for s in sig.inputs],
                    "outputs": [s.to_dict() for s in sig.outputs],
                }
            )
        )
        return
    table = Table(
        title=f"{model.name} (signature: {sig.signature_key or 'none'}, "
        f"runtime: {backend.runtime_name()})"
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
