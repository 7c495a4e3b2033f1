"""Benchmark the model server on the model the pipeline ships: gRPC Predict with the official client
against calling the same SavedModel signature in process.

    .venv/bin/python bench/bench_serving.py                       # the shipped model (trained once, cached)
    .venv/bin/python bench/bench_serving.py --model-dir var/serving/models/fraud     # any pushed base path
    .venv/bin/python bench/bench_serving.py --profile var/bench/serving-profile.svg  # + py-spy flame graph

The model is `shipped_model.shipped_model_base()` (the project's pipeline trained once on the shipped
sample: Transform graph, ensemble, calibrated score, explanations), or `--model-dir` (a base path holding
numbered versions, or one version directory). Every signature of fraud.signature it has is measured:
`serving_default` (serialized raw tf.Examples, string_val) and `serving_features` (float32 [N, 30], sent
as tensor_content). The fixed logistic toy model of serving.testing is one extra row, labelled as such.

Paths, measured in interleaved rounds so that other load on the machine hits them alike:
- in-process: `loaded.signatures[name](**tensors)` in this process (the model's own cost: no
  serialization, no network, no server); TensorFlow configured as the server configures it; the
  baseline of every ratio;
- in-process callable: the same signature run the way the server runs it (serving.servable's
  SessionBundle: one session, a C++ callable on the SignatureDef's tensor names), for reference: the
  gap between it and the gRPC rows is the transport (gRPC, codec, the client), and the gap between the
  two in-process rows is what the server saves by not calling the signature through TF2's Python path;
- gRPC, default flags: `python -m serving --model_base_path=...` as a user starts it;
- gRPC, tuned: the same server with the settings serving/README.md recommends for this machine
  (`--enable_batching` with TF Serving's CPU batching parameters: 2 batch threads = cores, timeout 0).
Callers are threads of this process, each with its own channel (its own connection, like separate
bridge processes) and `PredictionServiceStub.Predict(request)` from tensorflow_serving.apis: the
request object is built once per batch size; the stub serializes it on every call, as any client does.

Figures: rows/s over all callers and the ratio to in-process; per-call p50/p99; CPU per row of the
server processes (from /proc, workers included) and of this process (the callers, or the in-process
model). Then one caller sending one row at a time: p50/p99 per path. The run ends with one line per
goal of issue 13, met or missed:
- gRPC >= 0.8x in-process rows/s at batch 256 (4 callers, the shipped model, serving_default);
- single-row p99 over gRPC <= in-process p99 + 2 ms.
Absolute numbers move with other load on the machine; ratios within one run are the figure.
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fraud.features import FEATURE_NAMES
from fraud.signature import FEATURES_SIGNATURE_NAME, INPUT_EXAMPLES, INPUT_FEATURES, SIGNATURE_NAME

MODEL = "fraud"
TOY = "toy"
_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
#: What `gRPC, tuned` adds to the default flags (serving/README.md, "Performance", "Knobs").
TUNED_BATCHING = ("max_batch_size { value: 1024 }\nbatch_timeout_micros { value: 0 }\n"
                  "num_batch_threads { value: 2 }\nmax_enqueued_batches { value: 64 }\n")
TUNED_FLAGS = ("--enable_batching",)
GOAL_RATIO = 0.8
#: How the measured model is named in the table: "shipped model" by default, "model" with --model-dir.
MODEL_LABEL = ["shipped model"]
GOAL_P99_MS = 2.0


_console: list = []  # the fraud.console Console of this run (library output goes to a log file)


def echo(text: str) -> None:
    """A result line on the terminal (through the console: stdout itself goes to the log file)."""
    if _console:
        _console[0].echo(text)
    else:
        print(text, flush=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _proc_tree_cpu(pid: int) -> float:
    """CPU seconds (user + system) used so far by a process and its live children, from /proc (Linux)."""
    total = 0.0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / _TICKS
        except (OSError, IndexError, ValueError):
            continue
    return total


# ---------------------------------------------------------------------------------------------
# Measuring


@dataclass
class Point:
    """One (path, workload) measurement accumulated over several rounds."""

    rows: int = 0
    wall: float = 0.0
    latencies: list[float] = field(default_factory=list)
    server_cpu: float = 0.0
    client_cpu: float = 0.0

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

    def us_per_row(self, cpu: float) -> float:
        return cpu / self.rows * 1e6 if self.rows else float("nan")


def run_callers(clients: int, seconds: float, make_call: Callable[[int], Callable[[], object]]
                ) -> tuple[int, list[float], float]:
    """One caller per thread for `seconds`; returns (calls, per-call latencies, wall time)."""
    stop = threading.Event()
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors: list[BaseException] = []
    calls = [make_call(i) for i in range(clients)]

    def work(i: int) -> None:
        call, own = calls[i], latencies[i]
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


# ---------------------------------------------------------------------------------------------
# Servers


class Server:
    """`python -m serving` in a subprocess on a free port; stopped with SIGTERM."""

    def __init__(self, label: str, models: dict[str, Path], workdir: Path, extra: Sequence[str] = ()) -> None:
        self.label = label
        self.port = _free_port()
        config = workdir / f"models-{self.port}.config"
        config.write_text("model_config_list {\n" + "".join(
            f'  config {{ name: "{name}" base_path: "{path}" model_platform: "tensorflow" }}\n'
            for name, path in models.items()) + "}\n", encoding="utf-8")
        args = [sys.executable, "-m", "serving", f"--model_config_file={config}", f"--port={self.port}",
                "--rest_api_port=0", "--log_level=WARNING", *extra]
        if "--enable_batching" in extra:
            params = workdir / f"batching-{self.port}.config"
            params.write_text(TUNED_BATCHING, encoding="utf-8")
            args.append(f"--batching_parameters_file={params}")
        self.args = args
        self.log = open(workdir / f"server-{self.port}.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"))

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def cpu(self) -> float:
        return _proc_tree_cpu(self.proc.pid)

    def wait_ready(self, names: Sequence[str], timeout: float = 600.0) -> None:
        import grpc
        from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

        deadline = time.monotonic() + timeout
        with grpc.insecure_channel(self.target) as channel:
            stub = model_service_pb2_grpc.ModelServiceStub(channel)
            for name in names:
                request = get_model_status_pb2.GetModelStatusRequest()
                request.model_spec.name = name
                while True:
                    if self.proc.poll() is not None:
                        raise RuntimeError(f"server exited with {self.proc.returncode}; see {self.log.name}")
                    try:
                        stub.GetModelStatus(request, timeout=2)
                        break
                    except grpc.RpcError:
                        if time.monotonic() > deadline:
                            raise RuntimeError(f"server not ready in time; see {self.log.name}") from None
                        time.sleep(0.2)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


# ---------------------------------------------------------------------------------------------
# Workloads


@dataclass(frozen=True)
class Workload:
    """One model signature at one batch size."""

    model: str  # MODEL or TOY
    signature: str
    batch: int
    clients: int

    @property
    def label(self) -> str:
        what = "toy logistic model (serving.testing)" if self.model == TOY else f"{MODEL_LABEL[0]}, {self.signature}"
        return f"{what}, batch {self.batch}, {self.clients} caller{'s' if self.clients > 1 else ''}"


def _rows(batch: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    rows = rng.normal(size=(batch, len(FEATURE_NAMES))).astype(np.float32)
    rows[:, FEATURE_NAMES.index("Amount")] = np.abs(rows[:, FEATURE_NAMES.index("Amount")]) * 40
    rows[:, FEATURE_NAMES.index("Time")] = np.arange(batch, dtype=np.float32)
    return rows


def _examples(batch: int) -> list[bytes]:
    from fraud.wire import ExampleEncoder

    encoder = ExampleEncoder()
    return [encoder.encode(row) for row in _rows(batch).tolist()]


def request_for(w: Workload):
    """The PredictRequest a TF Serving client sends for `w`, built with the official protos."""
    import tensorflow as tf
    from tensorflow_serving.apis import predict_pb2

    request = predict_pb2.PredictRequest()
    request.model_spec.name = w.model
    request.model_spec.signature_name = w.signature
    if w.signature == FEATURES_SIGNATURE_NAME:
        proto = tf.make_tensor_proto(_rows(w.batch))  # numeric numpy -> tensor_content
        request.inputs[INPUT_FEATURES].CopyFrom(proto)
    else:
        request.inputs[INPUT_EXAMPLES].CopyFrom(tf.make_tensor_proto(_examples(w.batch), dtype=tf.string))
    return request


def in_process_call(loaded: dict, w: Workload) -> Callable[[int], Callable[[], object]]:
    import tensorflow as tf

    fn = loaded[w.model].signatures[w.signature]
    if w.signature == FEATURES_SIGNATURE_NAME:
        kwargs = {INPUT_FEATURES: tf.constant(_rows(w.batch))}
    else:
        kwargs = {INPUT_EXAMPLES: tf.constant(_examples(w.batch))}
    return lambda i: (lambda: fn(**kwargs))


def callable_call(bundles: dict, loaded: dict, w: Workload) -> Callable[[int], Callable[[], object]]:
    from serving.servable import Servable

    servable: Servable = bundles[w.model]
    sig = servable.signatures[w.signature]
    inputs = {INPUT_FEATURES: _rows(w.batch)} if w.signature == FEATURES_SIGNATURE_NAME else {
        INPUT_EXAMPLES: np.array(_examples(w.batch), dtype=object)}
    return lambda i: (lambda: servable.run(sig.key, inputs))


def grpc_call(server: Server, w: Workload, channels: list) -> Callable[[int], Callable[[], object]]:
    import grpc
    from tensorflow_serving.apis import prediction_service_pb2_grpc

    request = request_for(w)

    def make(i: int):
        while len(channels) <= i:  # own connection per caller (like separate client processes)
            channels.append(grpc.insecure_channel(server.target, options=[
                ("grpc.use_local_subchannel_pool", 1), ("grpc.max_receive_message_length", -1)]))
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channels[i])
        return lambda: stub.Predict(request, timeout=60)

    return make


# ---------------------------------------------------------------------------------------------
# The run


def resolve_model(model_dir: str | None, workdir: Path) -> Path:
    """A base path with numbered versions: the shipped model, a given base path, or a given version dir."""
    if model_dir is None:
        from shipped_model import shipped_model_base

        return shipped_model_base()
    path = Path(model_dir).resolve()
    if (path / "saved_model.pb").is_file():  # one version directory: serve it as version 1
        base = workdir / "model"
        base.mkdir()
        (base / "1").symlink_to(path, target_is_directory=True)
        return base
    if path.is_dir() and any(p.name.isdigit() for p in path.iterdir()):
        return path
    raise SystemExit(f"bench_serving: --model-dir={model_dir}: neither a SavedModel nor a base path of versions")


def latest_version(base: Path) -> Path:
    return max((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name))


#: Frames where a server thread waits (py-spy counts some blocking waits as active): left out of the summary.
IDLE_FRAMES = ("_worker (concurrent/futures/thread.py:81)", "_serve (grpc/_server.py:1314)")


def profile_server(server: Server, make_call, clients: int, seconds: float, out: Path) -> None:
    """py-spy flame graph of the server while `clients` callers load it, then a second (raw) recording
    summarized here: where the sampled time goes, and how often a thread holds the GIL."""
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out.parent.mkdir(parents=True, exist_ok=True)
    raw = out.with_suffix(".txt")
    gil = out.with_suffix(".gil.txt")
    rate = 200
    for fmt, path, extra in (("flamegraph", out, []), ("raw", raw, []), ("raw", gil, ["--gil"])):
        spy = subprocess.Popen([py_spy, "record", "--pid", str(server.proc.pid), "--subprocesses", "--rate", str(rate),
                                "--duration", str(int(seconds)), "--format", fmt, "--output", str(path), *extra],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        time.sleep(1.0)  # py-spy attaches
        run_callers(clients, seconds, make_call)
        output, _ = spy.communicate(timeout=120)
        if spy.returncode != 0:
            echo(f"py-spy failed ({spy.returncode}): {output.decode(errors='replace').strip()[-300:]}")
            return
    echo(f"profile: {out} (py-spy flame graph of {server.label}, {MODEL_LABEL[0]}, batch 256, {clients} callers)")
    leaves: dict[str, int] = {}
    under: dict[str, int] = {}
    busy = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = stack.split(";")
        if not count.isdigit() or frames[-1] in IDLE_FRAMES:
            continue
        busy += int(count)
        leaves[frames[-1]] = leaves.get(frames[-1], 0) + int(count)
        for marker in ("_call_tf_sessionrun", "__call__ (tensorflow/python/client/session.py",
                       "decode_predict_request", "encode_predict_response", "_status (grpc", "submit (concurrent"):
            if any(marker in f for f in frames):
                under[marker] = under.get(marker, 0) + int(count)
    if busy:
        echo(f"  {busy} busy samples; by leaf frame: " + "; ".join(
            f"{n * 100 / busy:.0f}% {f}" for f, n in sorted(leaves.items(), key=lambda kv: -kv[1])[:6]))
        echo("  inclusive: " + "; ".join(f"{n * 100 / busy:.0f}% {m}" for m, n in sorted(under.items(), key=lambda kv: -kv[1])))
    held = sum(int(line.rpartition(" ")[2]) for line in gil.read_text().splitlines() if line.rpartition(" ")[2].isdigit())
    echo(f"  GIL held in {held * 100 / (rate * seconds):.0f}% of {rate * seconds:.0f} sampling instants (py-spy --gil)")


def run(args: argparse.Namespace, workdir: Path) -> int:
    import grpc  # noqa: F401  (imported before TensorFlow's threads start)
    import tensorflow as tf

    from serving import testing
    from serving.server import configure_tensorflow

    configure_tensorflow()  # the in-process baseline runs TF with the server's settings (no idle spinning)
    base = resolve_model(args.model_dir, workdir)
    if args.model_dir:
        MODEL_LABEL[0] = "model"
    version = latest_version(base)
    toy_base = workdir / TOY
    testing.save_examples_model(toy_base, 1)
    from fraud.model_info import load_custom_ops

    load_custom_ops(str(version))  # a tree model's TF-DF ops, before TensorFlow parses its graph
    loaded = {MODEL: tf.saved_model.load(str(version)), TOY: tf.saved_model.load(str(toy_base / "1"))}
    from serving.servable import Servable

    bundles = {MODEL: Servable.load(MODEL, int(version.name), str(version)),
               TOY: Servable.load(TOY, 1, str(toy_base / "1"))}
    signatures = [s for s in (SIGNATURE_NAME, FEATURES_SIGNATURE_NAME) if s in loaded[MODEL].signatures]
    echo(f"model: {version} (signatures measured: {', '.join(signatures)}"
          f"{'' if FEATURES_SIGNATURE_NAME in signatures else f'; it has no {FEATURES_SIGNATURE_NAME}'})")
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    workloads = [Workload(MODEL, s, b, args.clients) for s in signatures for b in batch_sizes]
    if not args.no_toy:
        workloads.append(Workload(TOY, SIGNATURE_NAME, 256, args.clients))
    single = [Workload(MODEL, s, 1, 1) for s in signatures]

    models = {MODEL: base, TOY: toy_base}
    servers = [Server("gRPC, default flags", models, workdir),
               Server("gRPC, tuned", models, workdir, TUNED_FLAGS + tuple(args.server_arg))]
    paths = ["in-process", "in-process callable", *(s.label for s in servers)]
    results: dict[tuple[str, Workload], Point] = {}
    channels: dict[str, list] = {s.label: [] for s in servers}
    try:
        for server in servers:
            server.wait_ready([MODEL, TOY])
        echo(f"servers ready: {'; '.join(f'{s.label}: ' + ' '.join(s.args[3:]) for s in servers)}")
        for w in workloads + single:
            makers: dict[str, tuple[Server | None, Callable]] = {"in-process": (None, in_process_call(loaded, w)),
                                                                  "in-process callable": (None, callable_call(bundles, loaded, w))}
            for server in servers:
                makers[server.label] = (server, grpc_call(server, w, channels[server.label]))
            for _server, make_call in makers.values():  # warm every path up
                run_callers(w.clients, 0.5, make_call)
            seconds = args.seconds / args.rounds
            for _ in range(args.rounds):
                for path, (server, make_call) in makers.items():
                    server_cpu0 = server.cpu() if server else 0.0
                    client_cpu0 = time.process_time()
                    calls, latencies, wall = run_callers(w.clients, seconds, make_call)
                    server_cpu = server.cpu() - server_cpu0 if server else 0.0
                    results.setdefault((path, w), Point()).add(
                        calls * w.batch, wall, latencies, server_cpu, time.process_time() - client_cpu0)
            echo(f"measured: {w.label}")
        if args.profile:
            w = Workload(MODEL, SIGNATURE_NAME, 256, args.clients)
            profile_server(servers[-1], grpc_call(servers[-1], w, channels[servers[-1].label]), args.clients,
                           args.profile_seconds, Path(args.profile))
    finally:
        for chans in channels.values():
            for ch in chans:
                ch.close()
        for server in servers:
            server.stop()
    report(results, workloads, single, paths)
    return 0


def cpu_ratio(base: Point, r: Point) -> float:
    """In-process CPU per row over the gRPC path's (server + callers) CPU per row."""
    spent = r.us_per_row(r.server_cpu) + r.us_per_row(r.client_cpu)
    return base.us_per_row(base.client_cpu) / spent if r is not base and spent else 1.0


def report(results: dict, workloads: list[Workload], single: list[Workload], paths: list[str]) -> None:
    echo("")
    header = (f"{'path':<22} {'rows/s':>10} {'ratio':>6} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'server cpu us/row':>18} {'client cpu us/row':>18} {'cpu ratio':>9}")
    for w in workloads + single:
        echo(w.label)
        echo("  " + header)
        base = results[("in-process", w)]
        for path in paths:
            r = results[(path, w)]
            server = f"{r.us_per_row(r.server_cpu):>18.1f}" if not path.startswith("in-process") else f"{'-':>18}"
            echo(f"  {path:<22} {r.rows_s:>10,.0f} {r.rows_s / base.rows_s:>6.2f} {r.ms(50):>7.2f} {r.ms(99):>7.2f} "
                  f"{server} {r.us_per_row(r.client_cpu):>18.1f} {cpu_ratio(base, r):>9.2f}")
    echo("cpu ratio: in-process CPU per row / (server + client CPU per row): the throughput ratio when both")
    echo("paths are CPU-bound on the same cores (a quiet machine); on a busy one the scheduler's share decides.")
    echo("")
    goal_w = Workload(MODEL, SIGNATURE_NAME, 256, workloads[0].clients)
    if ("in-process", goal_w) in results:
        base = results[("in-process", goal_w)].rows_s
        for path in paths[2:]:
            r = results[(path, goal_w)]
            ratio = r.rows_s / base
            echo(f"goal gRPC >= {GOAL_RATIO}x in-process rows/s at batch 256 ({path}): "
                  f"{'MET' if ratio >= GOAL_RATIO else 'MISSED'}, {ratio:.2f}x "
                  f"({r.rows_s:,.0f} / {base:,.0f} rows/s; cpu ratio {cpu_ratio(results[('in-process', goal_w)], r):.2f})")
    one = Workload(MODEL, SIGNATURE_NAME, 1, 1)
    if ("in-process", one) in results:
        base = results[("in-process", one)]
        for path in paths[2:]:
            r = results[(path, one)]
            echo(f"goal single-row p99 <= in-process p99 + {GOAL_P99_MS:g} ms ({path}): "
                  f"{'MET' if r.ms(99) <= base.ms(99) + GOAL_P99_MS else 'MISSED'}, p99 {r.ms(99):.2f} ms vs "
                  f"{base.ms(99):.2f} ms (p50 {r.ms(50):.2f} vs {base.ms(50):.2f} ms)")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model-dir", help="a pushed model: base path of versions, or one version directory "
                                            "(default: the shipped model, trained once and cached)")
    parser.add_argument("--clients", type=int, default=4, help="concurrent callers (default 4)")
    parser.add_argument("--seconds", type=float, default=6.0, help="measuring time per path and workload (default 6)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds the time is split into (default 3)")
    parser.add_argument("--batch-sizes", default="1,256,1024", help="rows per request (default 1,256,1024)")
    parser.add_argument("--no-toy", action="store_true", help="skip the toy-model row")
    parser.add_argument("--server-arg", action="append", default=[], help="extra flag for the tuned server")
    parser.add_argument("--profile", metavar="SVG", help="write a py-spy flame graph of the tuned server under load "
                                                        "(batch 256), and summarize a second recording")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("-v", "--verbose", action="store_true", help="library output on the terminal, not in the log")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from fraud.console import quiet_output, timestamped_log
    from fraud.paths import load_paths

    run_dir = load_paths().home / "bench" / time.strftime("serving-%Y%m%d-%H%M%S")
    run_dir.mkdir(parents=True, exist_ok=True)
    log = timestamped_log(run_dir, "bench-serving")
    with quiet_output(log, verbose=args.verbose) as console:
        _console.append(console)
        try:
            echo(f"{args.clients} concurrent callers; {args.seconds:g} s per point in {args.rounds} interleaved "
                 f"rounds; {os.cpu_count()} CPUs; load average before: {os.getloadavg()[0]:.2f}")
            with tempfile.TemporaryDirectory(prefix="bench-serving-") as tmp:
                code = run(args, Path(tmp))
            echo(f"load average after: {os.getloadavg()[0]:.2f}")
            return code
        finally:
            _console.clear()
            if not args.verbose:
                console.echo(f"library output: {log}")


if __name__ == "__main__":
    sys.exit(main())
