"""End-to-end chaos: the whole stream as real service processes, faults injected, every event accounted for.

`make test-chaos` (`python -m chaos`) runs raw events -> preprocessing -> bridge -> warehouse sink, with
the monitor and the model server beside them, several times in a row, while it kill -9s each service,
bounces brokers and stops the model server; then it reads every output topic until it is quiescent and
reconciles what came out with what went in. See chaos/README.md.
"""
