"""Run by ``make core-only`` (part of ``make test``) in a virtualenv holding factbus
without any extra: no broker driver is installed there.

Checks that ``import factbus`` and the command line work without the drivers
(and that a bus runs without prometheus-client and opentelemetry, whose
features then refuse with the extra to install),
and that opening each broker's URL (transport, store, bench baseline) fails
with :class:`factbus.MissingDriver` naming the extra to install
(``pip install 'factbus[kafka]'``). Exits non-zero, saying what is wrong, when
a check fails.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

DRIVERS = {"kafka": "confluent_kafka", "amqp": "aio_pika", "kombu": "kombu", "postgres": "asyncpg"}
TRANSPORTS = {
    "kafka": "kafka://127.0.0.1:9092",
    "amqp": "amqp://guest:guest@127.0.0.1:5672/",
    "kombu": "kombu+redis://127.0.0.1:6379/0",
}
STORES = {"postgres": "postgresql://factbus:factbus@127.0.0.1:5432/factbus"}


def main() -> int:
    problems: list[str] = []
    for module in DRIVERS.values():
        if importlib.util.find_spec(module) is not None:
            problems.append(f"{module} is installed: this check needs a core-only install")
    if problems:
        print("\n".join(problems), file=sys.stderr)
        return 1

    import factbus
    from factbus.bench.baseline import baseline_for

    def expect_hint(what: str, extra: str, call: object) -> None:
        hint = f"pip install 'factbus[{extra}]'"
        try:
            call()  # type: ignore[operator]
        except factbus.MissingDriver as error:
            if hint not in str(error):
                problems.append(f"{what}: MissingDriver without the hint {hint!r}: {error}")
            elif error.extra != extra:
                problems.append(f"{what}: MissingDriver.extra is {error.extra!r}, not {extra!r}")
            else:
                print(f"ok   {what}: {error}")
        except Exception as error:  # any other failure is what this check reports
            problems.append(f"{what}: {type(error).__name__}: {error} (expected the hint {hint!r})")
        else:
            problems.append(f"{what}: opened without its driver (expected the hint {hint!r})")

    for extra, url in TRANSPORTS.items():
        expect_hint(f"open_transport({url})", extra, lambda url=url: factbus.open_transport(url))
        expect_hint(f"baseline_for({url})", extra, lambda url=url: baseline_for(url, "x"))
    for extra, url in STORES.items():
        expect_hint(f"open_store({url})", extra, lambda url=url: factbus.open_store(url))

    memory = factbus.open_transport("memory://core-only")
    print(f"ok   core transport without drivers: {memory!r}")
    cli = subprocess.run(
        [sys.executable, "-m", "factbus", "--help"], capture_output=True, text=True, check=False
    )
    if cli.returncode != 0:
        problems.append(f"factbus --help fails without the drivers:\n{cli.stderr}")
    else:
        print("ok   factbus --help")
    expect_refusal(["jinaga-bridge", "--config", "absent.toml"], "jinaga", "httpx", problems)
    expect_refusal(["sidecar", "--config", "absent.toml"], "sidecar", "starlette", problems)
    check_observability(problems)
    if problems:
        print("\n".join(f"FAIL {problem}" for problem in problems), file=sys.stderr)
        return 1
    return 0


def check_observability(problems: list[str]) -> None:
    """Without prometheus-client and opentelemetry: a bus runs untraced, metrics
    and ``factbus top`` refuse with the extra to install."""
    import asyncio

    import factbus
    from factbus import tracing
    from factbus.errors import ConfigError

    for module in ("prometheus_client", "opentelemetry"):
        if importlib.util.find_spec(module) is not None:
            problems.append(f"{module} is installed: this check needs a core-only install")
            return
    if tracing.AVAILABLE:
        problems.append("factbus.tracing.AVAILABLE without opentelemetry")

    async def run_bus() -> int:
        bus = factbus.Bus("memory://core-obs", "memory://", node="n", topic="t")
        seen: list[factbus.Fact] = []
        bus.handler("A")(seen.append)
        async with bus:
            await bus.publish(factbus.Fact("A", {"i": 1}))
            await bus.drain()
        return len(seen)

    handled = asyncio.run(run_bus())
    if handled != 1:
        problems.append(f"a bus without opentelemetry handled {handled} facts, not 1")
    else:
        print("ok   a bus runs without opentelemetry and prometheus-client")
    try:
        from factbus.metrics import Metrics

        Metrics()
    except ConfigError as error:
        if "pip install 'factbus[metrics]'" in str(error):
            print(f"ok   Metrics(): {error}")
        else:
            problems.append(f"Metrics() without prometheus-client: {error} (no hint)")
    else:
        problems.append("Metrics() worked without prometheus-client")
    top = ["top", "--metrics", "http://127.0.0.1:9/", "--once"]
    expect_refusal(top, "metrics", "prometheus-client", problems)


def expect_refusal(args: list[str], extra: str, missing: str, problems: list[str]) -> None:
    """``factbus ARGS`` without ``missing`` (a library of ``extra``) must exit 2 with
    the hint ``pip install 'factbus[EXTRA]'``; anything else is added to ``problems``."""
    hint = f"pip install 'factbus[{extra}]'"
    command = [sys.executable, "-m", "factbus", *args]
    run = subprocess.run(command, capture_output=True, text=True, check=False)
    if run.returncode != 2 or hint not in run.stderr:
        problems.append(
            f"factbus {args[0]} without {missing}: exit {run.returncode}, {run.stderr!r}"
            f" (expected exit 2 and the hint {hint})"
        )
    else:
        print(f"ok   factbus {args[0]}: {run.stderr.strip()}")


if __name__ == "__main__":
    sys.exit(main())
