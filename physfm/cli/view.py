"""``physfm view`` — a local web page over every run under a folder: run list and reports, rollout
viewer, steering panel with an α slider, tokenizer reconstructions, probe R² per layer."""

from __future__ import annotations

import argparse
import sys

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "view",
        help="a local web page to look at runs, scrub rollouts and steer with a slider",
        description=(
            "Serve one page over every run directory under RUNS_DIR (quickstart, pretrain, tokenizer, evaluate, "
            "finetune, probe, steer): the run list with each report, a rollout viewer (truth | prediction | "
            "error with a frame slider), a steering panel (an α slider; steered rollouts computed on this "
            "machine and cached), the tokenizer's reconstructions and code usage, and the probe's R² per layer. "
            "Everything is served by this process (no network needed); only files under RUNS_DIR are served, "
            "and checkpoints load through the safe loaders (weights only). Stop with Ctrl-C."
        ),
        epilog="example: physfm view runs/quickstart   (then open http://127.0.0.1:8765)",
    )
    p.add_argument(
        "runs_dir",
        nargs="?",
        default="runs",
        metavar="RUNS_DIR",
        help="folder of runs (default: runs)",
    )
    p.add_argument("--port", type=int, default=8765, help="port to listen on (default: 8765)")
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: 127.0.0.1, this machine only; any other address serves your runs to "
        "the network, with a warning)",
    )
    p.add_argument(
        "--device", default="cpu", help="torch device for rollouts and steering (default: cpu)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        metavar="N",
        help="CPU threads for the page's computations (default: 1, steady on a machine shared with other jobs: "
        "an α of the quickstart model takes 0.3-0.5 s there, while 2 threads ranged from 0.5 to 6 s; more "
        "threads pay off for a larger model on idle cores)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import logging
    from pathlib import Path

    from physfm.cli import UserError

    root = Path(args.runs_dir)
    if not root.is_dir():
        raise UserError(f"RUNS_DIR {root}: no such directory (make one with `make quickstart`)")
    if not 0 < args.port < 65536:
        raise UserError(f"--port {args.port}: expected 1-65535")
    if args.threads < 1:
        raise UserError(f"--threads {args.threads}: expected at least 1")
    if args.host not in LOOPBACK:
        print(
            f"physfm view: warning: --host {args.host} serves {root.resolve()} to every machine that can reach "
            "this address (no login); use 127.0.0.1 unless you mean it",
            file=sys.stderr,
        )
    check_can_listen(args.host, args.port)  # before the heavy imports and the "on http://…" line
    import threading

    import torch

    from physfm.view.app import create_app, prefetch
    from physfm.view.compute import Workbench

    torch.set_num_threads(args.threads)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    # one line per request hides the ones that matter
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    bench = Workbench(root, device=args.device)
    app = create_app(root, bench)
    threading.Thread(target=prefetch, args=(root.resolve(), bench), daemon=True).start()
    print(
        f"physfm view: {root.resolve()} on http://{args.host}:{args.port}/ (Ctrl-C stops)",
        flush=True,
    )
    try:
        app.run(host=args.host, port=args.port, debug=False)
    except OSError as err:  # taken between the check and now
        raise UserError(
            f"cannot listen on {args.host}:{args.port}: {err.strerror or err}"
        ) from None
    return 0


def check_can_listen(host: str, port: int) -> None:
    """Bind ``host:port`` the way the server will (address reuse on, as werkzeug sets it) and let it
    go, so a busy port or a foreign address is one line and exit 2 here; otherwise werkzeug prints
    its own message after ours has announced the page, and exits 1."""
    import errno
    import socket

    from physfm.cli import UserError

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind(address)
    except socket.gaierror as err:
        raise UserError(f"--host {host}: not an address of this machine ({err.strerror})") from None
    except OSError as err:
        if err.errno == errno.EADDRINUSE:
            raise UserError(
                f"port {port} on {host} is in use by another program; pick another with --port (e.g. --port {port + 1})"
            ) from None
        raise UserError(f"cannot listen on {host}:{port}: {err.strerror or err}") from None
