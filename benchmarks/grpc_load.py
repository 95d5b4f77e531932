"""A closed-loop gRPC load generator: N concurrent clients sending one PredictRequest back to
back, each waiting for its answer before sending the next.

It runs in a process of its own with gRPC's asyncio client (the N clients are coroutines
sharing one channel), so the load costs little CPU and none of it is spent under the
benchmark's or the server's GIL; on a small machine the clients still share its cores with the
server. `benchmarks.serving` drives its gRPC rows through it.

    python -m benchmarks.grpc_load --target 127.0.0.1:8500 --request FILE --clients 32 \
        --seconds 3 [--warmup_seconds 0.3] [--requests_per_client N]

FILE holds one serialized `tensorflow.serving.PredictRequest`. The last line of stdout is one
JSON object: `requests` (answered calls), `qps`, `p50_ms`, `p99_ms` (of answered calls),
`errors` (status names of failed calls), `seconds` (of the measured run). With
`--requests_per_client N` every client sends exactly N requests (all clients start together)
instead of sending for `--seconds`, and the warm-up runs one client only.

It also serves the transport floor: `--serve_echo --port P --response FILE` answers every
Predict with the serialized `PredictResponse` in FILE and runs nothing, on gRPC Python's
asyncio server (the server `serving.model_server` runs too; it answers more calls per second
than gRPC Python's thread-pool server). What the clients get from it bounds what a Python gRPC
front end gets on the machine, whatever it does per request.
"""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import numpy as np
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from common import cli

ANNOUNCEMENT = "measuring"


async def _run(target: str, request: predict_pb2.PredictRequest, clients: int,
               seconds: float, timeout: float, requests_per_client: int | None = None
               ) -> tuple[list[float], list[str]]:
    latencies: list[float] = []
    errors: list[str] = []
    async with grpc.aio.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        end = time.perf_counter() + seconds

        def more(sent: int) -> bool:
            if requests_per_client is not None:
                return sent < requests_per_client
            return time.perf_counter() < end

        async def client() -> None:
            sent = 0
            while more(sent):
                sent += 1
                started = time.perf_counter()
                try:
                    await stub.Predict(request, timeout=timeout)
                    latencies.append(time.perf_counter() - started)
                except grpc.aio.AioRpcError as e:
                    errors.append(e.code().name)

        await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors


def drive(target: str, request: predict_pb2.PredictRequest, clients: int, seconds: float,
          warmup_seconds: float = 0.3, timeout: float = 30.0,
          requests_per_client: int | None = None, announce: bool = False) -> dict:
    """Warms up for `warmup_seconds`, then measures for `seconds` (or until every client has
    sent `requests_per_client` requests; the warm-up then runs one client). With `announce`,
    prints the line `measuring` on stdout when the measured part begins."""
    if warmup_seconds > 0:
        warm_clients = clients if requests_per_client is None else 1
        asyncio.run(_run(target, request, warm_clients, warmup_seconds, timeout))
    if announce:
        print(ANNOUNCEMENT, flush=True)
    started = time.perf_counter()
    latencies, errors = asyncio.run(_run(target, request, clients, seconds, timeout,
                                         requests_per_client))
    if requests_per_client is not None:
        seconds = time.perf_counter() - started
    out = {"requests": len(latencies), "qps": len(latencies) / seconds, "errors": errors,
           "p50_ms": float("nan"), "p99_ms": float("nan"), "seconds": seconds}
    if latencies:
        ms = np.asarray(latencies) * 1e3
        out["p50_ms"], out["p99_ms"] = float(np.percentile(ms, 50)), float(np.percentile(ms, 99))
    return out


class _Echo(prediction_service_pb2_grpc.PredictionServiceServicer):
    def __init__(self, response: predict_pb2.PredictResponse):
        self._response = response

    async def Predict(self, request, context):  # noqa: N802  (gRPC method name)
        return self._response


async def serve_echo(port: int, response: predict_pb2.PredictResponse,
                     started: asyncio.Event | None = None) -> None:
    """Answers every Predict on `port` with `response` until cancelled."""
    server = grpc.aio.server()
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(_Echo(response), server)
    if server.add_insecure_port(f"127.0.0.1:{port}") == 0:
        raise OSError(f"Could not bind the echo server to port {port}")
    await server.start()
    if started is not None:
        started.set()
    try:
        await server.wait_for_termination()
    finally:
        await server.stop(None)


def main(argv: list[str] | None = None) -> int:
    # the result is always printed, as JSON: the serving benchmark reads it
    p = cli.ArgumentParser(prog="python -m benchmarks.grpc_load",
                           description=__doc__.split("\n\n")[0], json_flag=False)
    p.add_argument("--target", help="host:port of the gRPC server")
    p.add_argument("--request", help="file with one serialized PredictRequest")
    p.add_argument("--serve_echo", action="store_true",
                   help="serve --response to every Predict on --port instead")
    p.add_argument("--port", type=int, help="with --serve_echo")
    p.add_argument("--response", help="with --serve_echo: a serialized PredictResponse")
    p.add_argument("--clients", type=int, default=1)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--warmup_seconds", type=float, default=0.3)
    p.add_argument("--timeout", type=float, default=30.0, help="deadline of each call, s")
    p.add_argument("--requests_per_client", type=int, default=None,
                   help="each client sends exactly this many requests (instead of --seconds)")
    p.add_argument("--announce", action="store_true",
                   help=f"print '{ANNOUNCEMENT}' when the measured part begins (after the "
                        "start-up and the warm-up)")
    args = p.parse_args(argv)
    if args.serve_echo:
        if args.port is None or not args.response:
            p.error("--serve_echo needs --port and --response")

        def echo() -> None:
            response = predict_pb2.PredictResponse()
            with open(args.response, "rb") as f:
                response.ParseFromString(f.read())
            asyncio.run(serve_echo(args.port, response))

        return cli.run(echo, args)
    if not args.target or not args.request:
        p.error("--target and --request are required (or --serve_echo)")
    if args.clients < 1 or args.seconds <= 0:
        p.error("--clients must be >= 1 and --seconds > 0")
    if args.requests_per_client is not None and args.requests_per_client < 1:
        p.error("--requests_per_client must be >= 1")

    def load() -> dict:
        request = predict_pb2.PredictRequest()
        with open(args.request, "rb") as f:
            request.ParseFromString(f.read())
        return drive(args.target, request, args.clients, args.seconds, args.warmup_seconds,
                     args.timeout, args.requests_per_client, args.announce)

    return cli.run(load, args, show=json.dumps)


if __name__ == "__main__":
    raise SystemExit(main())
