"""``radlens serve``: the web app (search page + JSON API) over a built index and its model.

Binds to 127.0.0.1 unless ``--host`` says otherwise: the service has no user accounts, so anyone who
can reach the port can search the index. CORS is off unless ``--cors-origin`` names an origin.
Logs are JSON lines on stderr (one per request: id, method, route template, status, duration) and
never contain query or report text.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import socket
import sys
from pathlib import Path
from typing import Any

import typer

from radlens.cli.retrieval_cmd import check_folders
from radlens.core import InputError

_ORIGIN = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+$")


class _CurrentStderr(logging.StreamHandler):
    """A handler writing to whatever ``sys.stderr`` is when a line is logged, not when it was made
    (test runners and embedding tools swap ``sys.stderr``; a stale one may be closed)."""

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, value: Any) -> None:
        pass


def configure_logging() -> None:
    """JSON access/error lines from ``radlens.web`` on stderr (the messages are JSON already)."""
    logger = logging.getLogger("radlens.web")
    if not any(isinstance(handler, _CurrentStderr) for handler in logger.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: any free port); InputError if it is taken.

    The protocol is named (``IPPROTO_TCP``, not 0): asyncio turns Nagle's algorithm off only on
    connections whose socket says TCP, and with it on, every answer on a kept-alive connection waited
    ~40 ms for the client's delayed ACK.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise InputError(
            f"cannot listen on {host}:{port} ({exc.strerror or exc})",
            "pick another --port (or stop the program using it)" if port else "check --host",
        ) from exc
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_options(
    port: int, max_upload_mb: float, queue: int, cors_origins: list[str], threads: int = 1
) -> None:
    """One-line errors for bad option values."""
    if not 1 <= threads <= 256:
        raise InputError(f"--threads must be between 1 and 256 (got {threads})")
    if not 0 <= port <= 65535:
        raise InputError(f"--port must be between 0 and 65535 (got {port})")
    if not 0 < max_upload_mb <= 1024:
        raise InputError(f"--max-upload-mb must be above 0 and at most 1024 (got {max_upload_mb})")
    if not 1 <= queue <= 10_000:
        raise InputError(f"--queue must be between 1 and 10000 (got {queue})")
    for origin in cors_origins:
        if not _ORIGIN.match(origin):
            raise InputError(
                f"--cors-origin {origin!r} is not an origin",
                "pass scheme://host[:port], e.g. http://localhost:3000",
            )


def set_threads(threads: int) -> None:
    """Torch's CPU threads for the model.

    One by default: concurrent queries are batched, so one thread serves 8 clients within target; a
    second was ~15% faster on an idle 2-core machine but its synchronisation costs more than it saves
    on a busy one (docs/web.md, "Measured"), and the other core serves HTTP, images and explanations.
    """
    import torch

    torch.set_num_threads(threads)


def start_server(retriever: Any, settings: Any, sock: socket.socket, host: str) -> None:
    """Serve the app for ``retriever`` on the bound ``sock`` until Ctrl+C; prints the URL first."""
    import uvicorn

    from radlens.web.app import create_app

    actual = sock.getsockname()[1]
    configure_logging()
    app = create_app(retriever, settings)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    typer.echo(f"radlens is serving {len(retriever)} studies at http://{shown}:{actual}/  (Ctrl+C to stop)")
    if not _is_loopback(host):
        typer.echo(
            f"warning: listening on {host}: anyone who can reach this port can search the index "
            "(there are no user accounts)",
            err=True,
        )
    config = uvicorn.Config(app, access_log=False, log_level="warning", server_header=False)
    uvicorn.Server(config).run(sockets=[sock])


def serve(
    index: Path = typer.Option(..., "--index", help="Index folder from `radlens index build`."),
    model: Path = typer.Option(..., "--model", help="The checkpoint the index was built with."),
    host: str = typer.Option(
        "127.0.0.1", "--host", help="Address to listen on (default: this machine only)."
    ),
    port: int = typer.Option(8000, "--port", help="Port to listen on (0: any free port)."),
    max_upload_mb: float = typer.Option(
        20.0, "--max-upload-mb", help="Largest image upload accepted, in MB."
    ),
    queue: int = typer.Option(16, "--queue", help="Requests waiting for the model before 503 'busy'."),
    cors_origins: list[str] | None = typer.Option(
        None, "--cors-origin", help="Allow browser calls from this origin (repeatable; default: none)."
    ),
    threads: int = typer.Option(1, "--threads", help="CPU threads for the model (see docs/web.md)."),
) -> None:
    """Serve the search page and JSON API: find X-rays by report, reports by X-ray, and see why."""
    # Options are checked before the model stack is imported (~5 s: torch, transformers).
    origins = list(cors_origins or [])
    check_options(port, max_upload_mb, queue, origins, threads)
    check_folders(index, [model])
    sock = bind_socket(host, port)  # a taken port fails before the slow model load
    try:
        from radlens.retrieval.retriever import Retriever
        from radlens.web.app import Settings

        set_threads(threads)
        retriever = Retriever.load(index, model)
    except BaseException:
        sock.close()
        raise
    settings = Settings(max_upload_mb=max_upload_mb, queue_size=queue, cors_origins=tuple(origins))
    start_server(retriever, settings, sock, host)


def register(app: typer.Typer) -> None:
    """Add ``radlens serve`` to the CLI."""
    app.command("serve")(serve)
