"""`volume serve --tables DIR`: the query service (Ray Serve, FastAPI) over the tables in
DIR, on http://127.0.0.1:8000 by default (OpenAPI docs at /docs).

Job submission and cancellation (POST /jobs, DELETE /jobs/ID) require `Authorization: Bearer
TOKEN` when the environment variable VOLUME_TOKEN is set. The service binds a non-loopback
address only with a token; the HTTP port and the replicas' gRPC ports bind --host only.
What one request or job may cost is bounded (volume.limits; cluster/README.md).
Runs on a local Ray instance, or on the cluster named by --address / RAY_ADDRESS.
"""

from __future__ import annotations

import argparse
import os
import signal
import time
from pathlib import Path

from volume.commands import add_command
from volume.wire import TOKEN_ENV
from volume.errors import VolumeError


def register(sub: argparse._SubParsersAction) -> None:
    p = add_command(sub, "serve", "run the query service over a directory of tables", __doc__.split("\n", 2)[2],
                    ["volume serve --tables tables/", "VOLUME_TOKEN=... volume serve --tables tables/ --port 8080",
                     "VOLUME_TOKEN=... volume serve --tables /data/tables --host 0.0.0.0 --address auto --replicas 2"])
    p.add_argument("--tables", required=True, help="directory of tables (NAME.h5); jobs create tables here")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (non-loopback needs VOLUME_TOKEN)")
    p.add_argument("--port", type=int, default=8000, help="TCP port to listen on")
    p.add_argument("--address", default=None, help="Ray cluster (auto, ray://HOST:10001); default a local instance")
    p.add_argument("--replicas", type=int, default=1, help="ingress replicas (lookups); jobs run in one runner")
    p.add_argument("--data-dir", default=None, help="directory image specs may read their inputs from")
    p.add_argument("--checkpoint-seconds", type=float, default=5.0, help="how often a job saves its table")
    p.add_argument("--max-functions", type=int, default=None, help="largest P(f) batch (default 4096)")
    p.add_argument("--max-body-bytes", type=int, default=None, help="largest request body (default 1 MiB)")
    p.set_defaults(func=run)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def run(args: argparse.Namespace) -> int:
    from volume.jobs import is_loopback_host, ray_session

    token = os.environ.get(TOKEN_ENV) or None
    if not is_loopback_host(args.host) and token is None:
        raise VolumeError(f"refusing to bind {args.host!r} without a token: anyone who can reach it could start jobs. "
                          f"Set {TOKEN_ENV} (clients send it as a bearer token), or bind 127.0.0.1")
    if not 0 < args.port < 65536:
        raise VolumeError(f"--port {args.port} is invalid: give 1..65535")
    if args.replicas < 1:
        raise VolumeError("--replicas must be >= 1")
    if not Path(args.tables).is_dir():
        raise VolumeError(f"--tables {args.tables!r} is not a directory: create it (jobs write their tables there)")
    with ray_session(args.address) as ray:  # noqa: F841 (imports Ray with the loopback setting first)
        from ray import serve

        from volume.service import Limits, application, http_options

        overrides = {k: v for k, v in (("max_functions", args.max_functions),
                                       ("max_body_bytes", args.max_body_bytes)) if v is not None}
        limits = Limits(**overrides)
        app = application(args.tables, token=token, limits=limits, data_dir=args.data_dir,
                          replicas=args.replicas, checkpoint_seconds=args.checkpoint_seconds, bind_host=args.host)
        serve.start(http_options=http_options(args.host, args.port, limits))
        serve.run(app, name="volume", route_prefix="/")
        print(f"volume service on http://{args.host}:{args.port} (docs at /docs; jobs "
              f"{'need a bearer token' if token else 'need no token'}); Ctrl-C stops it", flush=True)
        signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the service as Ctrl-C does
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        finally:
            if args.address is None and not os.environ.get("RAY_ADDRESS"):
                serve.shutdown()
            else:
                serve.delete("volume")
    return 0
