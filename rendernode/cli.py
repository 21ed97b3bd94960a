"""``rendernode serve | submit | status | cancel``."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import logging
import os
import sys
from typing import Any, TextIO

import aiohttp

from rendernode import __version__
from rendernode.client import TERMINAL, NodeClient, NodeError
from rendernode.config import add_arguments, settings_from

DEFAULT_URL = "http://127.0.0.1:3000"


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    from aiohttp import web

    from rendernode.app import create_app

    settings = settings_from(args)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not _is_loopback(settings.host) and not settings.token:
        logging.getLogger("rendernode").warning(
            "!!! listening on %s WITHOUT A TOKEN: anyone who can reach this port can run Blender here."
            " Set --token or RENDERNODE_TOKEN. !!!",
            settings.host,
        )
    app = create_app(settings)
    web.run_app(
        app,
        host=settings.host,
        port=settings.port,
        print=lambda _msg: print(f"rendernode {__version__} on http://{settings.host}:{settings.port}", flush=True),
        shutdown_timeout=settings.stop_grace + 5,
        access_log=logging.getLogger("aiohttp.access") if settings.access_log else None,
    )
    return 0


def run_farm_command(args: argparse.Namespace) -> int:
    from rendernode.farm.app import FarmSettings, read_nodes_file, run_farm

    nodes = list(args.node)
    if args.nodes_file:
        nodes += read_nodes_file(args.nodes_file)
    values: dict[str, Any] = {"host": args.host, "port": args.port, "nodes": nodes, "chunk_size": args.chunk_size,
                              "token": args.token, "node_token": args.node_token}
    if args.data_dir:
        values["data_dir"] = args.data_dir
    run_farm(FarmSettings(**values))
    return 0


def _bar(percent: float, width: int = 30) -> str:
    filled = round(width * min(max(percent, 0.0), 100.0) / 100.0)
    return "#" * filled + "-" * (width - filled)


def _eta(seconds: Any) -> str:
    if seconds is None:
        return "--:--"
    seconds = int(seconds)
    return f"{seconds // 60:02d}:{seconds % 60:02d}"


class ProgressPrinter:
    """One status line, redrawn in place on a terminal and printed per frame otherwise."""

    def __init__(self, out: TextIO) -> None:
        self.out = out
        self.tty = out.isatty()
        self.done = 0
        self.total = 0

    def line(self, text: str, *, permanent: bool = False) -> None:
        if self.tty:
            self.out.write("\r\033[K" + text + ("\n" if permanent else ""))
        elif permanent:
            self.out.write(text + "\n")
        self.out.flush()

    def job(self, job: dict[str, Any]) -> None:
        self.done = job["frames"]["done"]
        self.total = job["frames"]["total"]
        self.line(f"[{_bar(job['percent'])}] {job['percent']:5.1f}% {self.done}/{self.total} frames  {job['status']}")

    def event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        if kind == "snapshot":
            self.job(event["job"])
        elif kind == "frame_progress":
            percent = event.get("job_percent") or 0.0
            self.line(
                f"[{_bar(percent)}] {percent:5.1f}% {self.done}/{self.total} frames"
                f"  frame {event['frame']} {event.get('percent') or 0:.0f}%  ETA {_eta(event.get('eta_seconds'))}"
            )
        elif kind == "frame_done":
            self.done = event.get("frames_done", self.done + 1)
            self.line(
                f"frame {event['frame']} done in {event['render_seconds']:.2f} s  ({self.done}/{self.total})",
                permanent=True,
            )
        elif kind in ("job_completed", "job_failed", "job_cancelled"):
            status = kind.removeprefix("job_")
            error = f": {event['error']}" if event.get("error") else ""
            self.line(f"job {event['job_id']} {status}{error}", permanent=True)
        elif kind == "warning":
            self.line(f"warning: {event.get('message')}", permanent=True)


async def _follow(client: NodeClient, job_id: str, printer: ProgressPrinter) -> str:
    """Follow a job over its WebSocket; fall back to polling if the socket is unavailable or drops."""
    try:
        async for event in client.events(job_id):
            printer.event(event)
            kind = str(event.get("type", ""))
            if kind in ("job_completed", "job_failed", "job_cancelled"):
                return kind.removeprefix("job_")
            if kind == "snapshot" and event["job"]["status"] in TERMINAL:
                return str(event["job"]["status"])
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        printer.line(f"(WebSocket unavailable: {exc}; polling instead)", permanent=True)
    status = "failed"
    async for job in client.wait_polling(job_id):
        printer.job(job)
        status = job["status"]
    printer.line(f"job {job_id} {status}", permanent=True)
    return status


async def _submit(args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"from": args.frame_from, "to": args.frame_to}
    for name in ("scene", "engine", "format"):
        if getattr(args, name):
            body[name] = getattr(args, name)
    async with NodeClient(args.url, args.token) as client:
        job = await client.submit(body)
        print(job["id"], flush=True)
        if not args.follow:
            return 0
        status = await _follow(client, job["id"], ProgressPrinter(sys.stderr))
        return 0 if status == "completed" else 1


async def _status(args: argparse.Namespace) -> int:
    async with NodeClient(args.url, args.token) as client:
        job, _ = await client.status(args.job_id)
        print(json.dumps(job, indent=2))
        return 1 if job["status"] in ("failed", "cancelled") else 0


async def _cancel(args: argparse.Namespace) -> int:
    async with NodeClient(args.url, args.token) as client:
        job = await client.cancel(args.job_id)
        print(f"job {job['id']} {job['status']}")
        return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rendernode", description="A Blender render node with live progress.")
    parser.add_argument("--version", action="version", version=f"rendernode {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    serve_parser = commands.add_parser("serve", help="run a render node")
    add_arguments(serve_parser)
    serve_parser.set_defaults(run=serve)

    farm = commands.add_parser("farm", help="run an orchestrator that spreads jobs over several nodes")
    farm.add_argument("--node", action="append", default=[], help="a node's URL (repeatable)")
    farm.add_argument("--nodes-file", help="a file with one node URL per line")
    farm.add_argument("--host", default=os.environ.get("RENDERNODE_FARM_HOST", "127.0.0.1"))
    farm.add_argument("--port", type=int, default=int(os.environ.get("RENDERNODE_FARM_PORT", "4000")))
    farm.add_argument("--data-dir", default=os.environ.get("RENDERNODE_FARM_DATA_DIR"))
    farm.add_argument("--chunk-size", type=int, default=0, help="frames per chunk (default: picked per job)")
    farm.add_argument("--token", default=os.environ.get("RENDERNODE_FARM_TOKEN"), help="token clients must send")
    farm.add_argument("--node-token", default=os.environ.get("RENDERNODE_TOKEN"), help="token the nodes expect")
    farm.set_defaults(run=run_farm_command)

    def client_parser(name: str, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text)
        sub.add_argument(
            "--url", default=os.environ.get("RENDERNODE_URL", DEFAULT_URL), help="the node (default %(default)s)"
        )
        sub.add_argument(
            "--token", default=os.environ.get("RENDERNODE_TOKEN"), help="bearer token, if the node needs one"
        )
        return sub

    submit = client_parser("submit", "submit a job")
    submit.add_argument("--from", dest="frame_from", type=int, required=True)
    submit.add_argument("--to", dest="frame_to", type=int, required=True)
    submit.add_argument("--scene")
    submit.add_argument("--engine")
    submit.add_argument("--format")
    submit.add_argument("--follow", action="store_true", help="show live progress; exit 1 if the job fails")
    submit.set_defaults(run=lambda a: asyncio.run(_submit(a)))

    status = client_parser("status", "show a job")
    status.add_argument("job_id")
    status.set_defaults(run=lambda a: asyncio.run(_status(a)))

    cancel = client_parser("cancel", "cancel a job")
    cancel.add_argument("job_id")
    cancel.set_defaults(run=lambda a: asyncio.run(_cancel(a)))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.run(args))
    except NodeError as exc:
        print(f"rendernode: {exc}", file=sys.stderr)
        return 2
    except aiohttp.ClientConnectionError as exc:
        print(f"rendernode: cannot reach the node: {exc}", file=sys.stderr)
        return 2
