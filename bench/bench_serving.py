"""Benchmark the model server: rows/s over gRPC against calling the same SavedModel signature in process.

    .venv/bin/python bench/bench_serving.py [--clients 4] [--seconds 6] [--rounds 3] [--batch-sizes 1,32,256]

For each batch size, with the same number of concurrent callers (threads):
- in-process: `loaded.signatures["serving_default"](examples=<tensor>)` in this process (the model's own
  cost: no serialization, no network, no server);
- gRPC Predict to `python -m serving` (a subprocess) without server-side batching, and to a second one
  with batching (max_batch_size 1024, batch_timeout_micros 0, 2 batch threads).
The model has the project's signature (fraud.signature: serialized raw tf.Examples in, score / decision /
threshold / reconstruction_error / feature_contributions out) and parses 30 float features per row.

The three paths are measured in interleaved rounds (in-process, server, batching server, again ...) so
that other load on the machine hits them alike; rows/s is the total over the rounds, p50/p99 are per
call. Clients send pre-serialized PredictRequests (built once with the official protos: the bytes any TF
Serving client sends); the client-side cost of building one is printed on its own. CPU columns give the
CPU time per row of the server process and of this (client / in-process) process during the runs.
Goal from the issue: >= 0.8x the in-process rows/s at batch 256.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

MODEL = "bench"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) a process has used so far, from /proc (Linux)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICKS
    except (OSError, IndexError, ValueError):
        return None


class Point:
    """Accumulates one (path, batch size) measurement over several rounds."""

    def __init__(self) -> None:
        self.rows = 0
        self.wall = 0.0
        self.latencies: list[float] = []
        self.server_cpu = 0.0
        self.client_cpu = 0.0

    def add(self, rows: int, wall: float, latencies: list[float], server_cpu: float, client_cpu: float) -> None:
        self.rows += rows
        self.wall += wall
        self.latencies += latencies
        self.server_cpu += server_cpu
        self.client_cpu += client_cpu

    @property
    def rows_s(self) -> float:
        return self.rows / self.wall if self.wall else 0.0

    def ms(self, q: float) -> float:
        return float(np.percentile(np.asarray(self.latencies), q)) * 1e3 if self.latencies else float("nan")

    def cpu_us_per_row(self, which: str) -> float:
        return getattr(self, which) / self.rows * 1e6 if self.rows else float("nan")


def _run_threads(clients: int, seconds: float, make_call) -> tuple[int, list[float], float]:
    """Run one caller per thread for `seconds`; returns (calls, per-call latencies, wall time)."""
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []

    def work(i: int) -> None:
        call = make_call(i)
        own = latencies[i]
        try:
            while not stop.is_set():
                t0 = time.perf_counter()
                call()
                own.append(time.perf_counter() - t0)
        except BaseException as exc:  # report it, don't hang the benchmark
            errors.append(exc)
            stop.set()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for t in threads:
        t.start()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join()
    wall = time.perf_counter() - started
    if errors:
        raise RuntimeError(f"a caller failed: {errors[0]!r}")
    flat = [x for own in latencies for x in own]
    return len(flat), flat, wall


def _examples(n: int) -> list[bytes]:
    from serving import testing

    return [testing.example(seed=i) for i in range(n)]


def _predict_request(batch: int) -> bytes:
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL
    request.inputs["examples"].CopyFrom(tf.make_tensor_proto(_examples(batch), dtype=tf.string))
    return request.SerializeToString()


def measure_request_building(batch_sizes: list[int]) -> dict[int, float]:
    """Client-side cost of building and serializing a PredictRequest (us), with the official protos."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    out = {}
    for batch in batch_sizes:
        rows = _examples(batch)
        n = 100
        t0 = time.perf_counter()
        for _ in range(n):
            request = predict_pb2.PredictRequest()
            request.model_spec.name = MODEL
            request.inputs["examples"].CopyFrom(tf.make_tensor_proto(rows, dtype=tf.string))
            request.SerializeToString()
        out[batch] = (time.perf_counter() - t0) / n * 1e6
    return out


class Server:
    """`python -m serving` in a subprocess on a free port; stopped with SIGTERM."""

    def __init__(self, base_path: Path, batching: bool, workdir: Path, clients: int) -> None:
        self.batching = batching
        self.port = _free_port()
        args = [sys.executable, "-m", "serving", f"--model_name={MODEL}", f"--model_base_path={base_path}",
                f"--port={self.port}", "--rest_api_port=0", "--log_level=WARNING"]
        if batching:
            params = workdir / "batching.config"
            params.write_text("max_batch_size { value: 1024 }\nbatch_timeout_micros { value: 0 }\n"
                              f"num_batch_threads {{ value: 2 }}\nmax_enqueued_batches {{ value: {4 * clients} }}\n",
                              encoding="utf-8")
            args += ["--enable_batching", f"--batching_parameters_file={params}"]
        self.log = open(workdir / f"server-{'batching' if batching else 'plain'}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))

    def wait_ready(self, timeout: float = 300.0) -> None:
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(f"127.0.0.1:{self.port}") as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            request = get_model_status_pb2.GetModelStatusRequest()
            request.model_spec.name = MODEL
            while time.monotonic() < deadline:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
                try:
                    stub.GetModelStatus(request, timeout=2)
                    return
                except grpc.RpcError:
                    time.sleep(0.2)
        raise RuntimeError("server not ready in time")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def _grpc_caller(channels: list, payload: bytes):
    """make_call(i) for _run_threads: client thread i uses its own channel."""

    def make_call(i: int):
        stub = channels[i % len(channels)].unary_unary(
            "/tensorflow.serving.PredictionService/Predict",
            request_serializer=lambda b: b, response_deserializer=lambda b: b)
        return lambda: stub(payload, timeout=60)

    return make_call


def run(batch_sizes: list[int], clients: int, seconds: float, rounds: int, workdir: Path) -> None:
    import grpc
    import tensorflow as tf

    from serving import testing
    from serving.server import configure_tensorflow

    configure_tensorflow()  # the in-process baseline runs TF with the server's settings (no idle spinning)
    model_dir = testing.save_examples_model(workdir / MODEL, 1)
    fn = tf.saved_model.load(str(model_dir)).signatures["serving_default"]
    servers = [Server(workdir / MODEL, batching, workdir, clients) for batching in (False, True)]
    paths = ["in-process signature call", "gRPC Predict, batching off", "gRPC Predict, batching on"]
    results: dict[tuple[str, int], Point] = {}
    try:
        for server in servers:
            server.wait_ready()
        channels = {id(s): [grpc.insecure_channel(f"127.0.0.1:{s.port}") for _ in range(clients)] for s in servers}
        slice_s = seconds / rounds
        for batch in batch_sizes:
            tensor = tf.constant(_examples(batch))
            payload = _predict_request(batch)
            makers = {
                paths[0]: (None, lambda i, t=tensor: (lambda: fn(examples=t))),
                paths[1]: (servers[0], _grpc_caller(channels[id(servers[0])], payload)),
                paths[2]: (servers[1], _grpc_caller(channels[id(servers[1])], payload)),
            }
            for _server, make_call in makers.values():  # warm every path up
                _run_threads(clients, 0.3, make_call)
            for _ in range(rounds):
                for path, (server, make_call) in makers.items():
                    server_cpu0 = _proc_cpu(server.proc.pid) if server else 0.0
                    client_cpu0 = time.process_time()
                    calls, latencies, wall = _run_threads(clients, slice_s, make_call)
                    server_cpu = (_proc_cpu(server.proc.pid) or 0.0) - (server_cpu0 or 0.0) if server else 0.0
                    results.setdefault((path, batch), Point()).add(
                        calls * batch, wall, latencies, server_cpu, time.process_time() - client_cpu0)
        for chans in channels.values():
            for ch in chans:
                ch.close()
    finally:
        for server in servers:
            server.stop()

    building = measure_request_building(batch_sizes)
    print()
    header = (f"{'batch':>6} {'path':<27} {'rows/s':>10} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'server cpu us/row':>18} {'client cpu us/row':>18}")
    print(header)
    print("-" * len(header))
    for batch in batch_sizes:
        base = results[(paths[0], batch)]
        for path in paths:
            r = results[(path, batch)]
            server_cpu = f"{r.cpu_us_per_row('server_cpu'):>18.1f}" if path != paths[0] else f"{'-':>18}"
            print(f"{batch:>6} {path:<27} {r.rows_s:>10,.0f} {r.rows_s / base.rows_s:>6.2f} {r.ms(50):>7.2f} "
                  f"{r.ms(99):>7.2f} {server_cpu} {r.cpu_us_per_row('client_cpu'):>18.1f}")
    print()
    print("client-side request building (official protos, make_tensor_proto + SerializeToString): "
          + ", ".join(f"batch {b}: {us:,.0f} us" for b, us in building.items()))
    if 256 in batch_sizes:
        best = max(results[(p, 256)].rows_s for p in paths[1:]) / results[(paths[0], 256)].rows_s
        print(f"goal >= 0.80x in-process rows/s at batch 256: best {best:.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=4, help="concurrent callers (default 4)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per path and batch size (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds the time is split into (default 3)")
    parser.add_argument("--batch-sizes", default="1,32,256", help="rows per request (default 1,32,256)")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    print(f"model: the project's signature (serialized tf.Examples, 30 features -> score/decision/threshold/...); "
          f"{args.clients} concurrent callers; {args.seconds:g} s per point in {args.rounds} interleaved rounds; "
          f"{os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}")
    with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
        run(batch_sizes, args.clients, args.seconds, args.rounds, Path(tmp))
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
