"""`cxrlearn app --model PATH`: the web page and HTTP API on this machine (FastAPI + uvicorn).

The model is loaded before the server starts, so a wrong file is one red line, not a
server that answers every request with an error, and so is a port in use (one line that
names `--port`, before any URL is printed); the model's warning, when its quality is unknown
or near chance, is printed before the server starts. The server answers only to the names
of this machine's loopback address and to `--host`; a name other machines use to reach it
must be allowed with `--allowed-host NAME` (the host check of `cxrlearn.app.guard`).
Without `--model` nothing is trained: the command says how to get a model and exits with
status 2. Without the `app` extra it says what to install. See `cxrlearn.app` and
lessons/07_app.ipynb.
"""

from __future__ import annotations

import argparse
import importlib.util

from rich.console import Console
from rich.markup import escape

from cxrlearn.cli import add_device_argument, add_model_argument, port, positive_int
from cxrlearn.errors import CxrlearnError

__all__ = ["HELP", "add_parser", "missing_app_packages"]

HELP = "Serve a web page and HTTP API that classify uploaded X-rays."

# Package (as pip names it) -> the modules it may provide; python-multipart was imported
# as `multipart` before version 0.0.13 and as `python_multipart` since.
APP_PACKAGES = {"fastapi": ("fastapi",), "uvicorn": ("uvicorn",),
                "python-multipart": ("python_multipart", "multipart")}

NO_MODEL = """\
[bold red]cxrlearn app needs a model:[/] --model PATH, a checkpoint (best.pt) or an
exported file (model.pt). The app trains nothing. To get a model on a CPU in minutes:

  cxrlearn demo --out runs/demo              # train on the bundled sample X-rays
  cxrlearn app --model runs/demo/best.pt     # probabilities and Grad-CAM

or export it first (probabilities only, no Grad-CAM):

  cxrlearn export --model runs/demo
  cxrlearn app --model runs/demo/model.pt"""


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "app", help=HELP,
        description="Start a local web app: upload a chest X-ray, see the class probabilities "
                    "and the Grad-CAM overlay. Needs `pip install 'cxrlearn[app]'`. "
                    "A teaching tool, not a diagnostic device.")
    add_model_argument(p, required=False,
                       extra="A checkpoint gives probabilities and Grad-CAM, an exported "
                             "file probabilities only.")
    p.add_argument("--host", default="127.0.0.1",
                   help="The address to listen on. Default: 127.0.0.1, this machine only.")
    p.add_argument("--port", type=port, default=8000, help="The port. Default: 8000.")
    p.add_argument("--allowed-host", action="append", default=[], metavar="NAME",
                   help="A host name or address clients use to reach the app, besides "
                        "localhost, 127.0.0.1, [::1] and --host (repeatable). Requests "
                        "naming any other host are refused, against DNS rebinding.")
    add_device_argument(p)
    p.add_argument("--max-pixels", type=positive_int, default=None, metavar="N",
                   help="The largest image accepted, in pixels, checked before decoding. "
                        "Default: 4096 x 4096 = 16777216.")
    p.set_defaults(func=run)


def missing_app_packages() -> list[str]:
    """The packages of the `app` extra that are not installed (names as pip knows them)."""
    return [package for package, modules in APP_PACKAGES.items()
            if all(importlib.util.find_spec(m) is None for m in modules)]


def run(args: argparse.Namespace, console: Console) -> int:
    if args.model is None:
        console.print(NO_MODEL, highlight=False, soft_wrap=True)
        return 2
    missing = missing_app_packages()
    if missing:
        raise CxrlearnError(f"the app needs {', '.join(missing)}, which "
                            f"{'is' if len(missing) == 1 else 'are'} not installed: "
                            "pip install 'cxrlearn[app]'")
    # Imported here: the other commands must work without the extra.
    from cxrlearn.app import create_app
    from cxrlearn.app.connections import bind_port, server_config
    from cxrlearn.device import select_device

    wildcard = args.host in ("0.0.0.0", "::", "")
    hosts = [*([] if wildcard else [args.host]), *args.allowed_host]
    limits = {} if args.max_pixels is None else {"max_pixels": args.max_pixels}
    # A bad model file or device fails here, before the server starts.
    device = select_device(args.device)
    app = create_app(args.model, allowed_hosts=hosts, **limits)
    model = app.state.service.model
    if model.network is not None:  # Grad-CAM's private copy follows it (TrainedModel.explain)
        model.network.to(device)
    # The port is taken now, before any URL is printed: a port in use is one line about
    # --port, not a link to whatever else listens there.
    sock = bind_port(args.host, args.port)
    info = app.state.service.info
    console.print(f"cxrlearn app: [bold]{escape(info.file)}[/] ({info.kind}, "
                  f"{len(info.classes)} classes)", highlight=False)
    if info.warning:
        console.print(f"[yellow]warning:[/] {escape(info.warning)}", highlight=False,
                      soft_wrap=True)
    for note in info.notes:  # what the model file says that was left out, and why
        console.print(f"[yellow]note:[/] {escape(note)}", highlight=False, soft_wrap=True)
    if model.network is None and device.type != "cpu":
        console.print(f"[yellow]note:[/] {escape(model.path.name)} is an exported file: it "
                      "runs on the CPU", highlight=False, soft_wrap=True)
    if info.gradcam_note:
        console.print(f"[yellow]note:[/] {escape(info.gradcam_note)}", highlight=False,
                      soft_wrap=True)
    if args.host not in ("127.0.0.1", "localhost", "::1"):
        console.print(f"[yellow]warning:[/] listening on {escape(args.host)}: other machines "
                      "can reach the app, and it has no login", highlight=False)
    if wildcard and not args.allowed_host:
        console.print("[yellow]note:[/] it answers only to localhost until you name the "
                      "host others use: --allowed-host NAME (this machine's name or "
                      "address)", highlight=False, soft_wrap=True)
    url = f"http://{'localhost' if args.host in ('127.0.0.1', '::1') else args.host}:{args.port}/"
    console.print(f"open [bold]{url}[/] in a browser (Ctrl-C stops the server). "
                  "A teaching tool, not a diagnostic device.", highlight=False, soft_wrap=True)
    import uvicorn

    uvicorn.Server(server_config(app)).run(sockets=[sock])
    return 0
