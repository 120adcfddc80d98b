"""scripts/brokers/rabbitmq.sh: the Erlang scheduler arguments it gives the node.

Only the function that renders ``SERVER_ADDITIONAL_ERL_ARGS`` is run (the
script sourced in a bash of its own, nothing written, no broker touched): one
scheduler (``+S 1:1``) on a machine of 2 cores or fewer, Erlang's default
otherwise, ``FACTBUS_RABBITMQ_SCHEDULERS`` overriding both, a bad value refused
by name (benchmarks/studies/PROFILE.md §27, docs/brokers.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
LOOPBACK = "-kernel inet_dist_use_interface {127,0,0,1}"


def erl_args(schedulers: str | None, cores: int | None = None) -> subprocess.CompletedProcess[str]:
    """Source common.sh and rabbitmq.sh and print ``rabbitmq_erl_args`` (with
    ``nproc`` answering ``cores`` when given)."""
    env = {k: v for k, v in os.environ.items() if k != "FACTBUS_RABBITMQ_SCHEDULERS"}
    if schedulers is not None:
        env["FACTBUS_RABBITMQ_SCHEDULERS"] = schedulers
    fake = f"nproc() {{ echo {cores}; }}; " if cores is not None else ""
    script = (
        f"{fake}source scripts/brokers/common.sh; source scripts/brokers/rabbitmq.sh; "
        "rabbitmq_erl_args"
    )
    bash = shutil.which("bash")
    assert bash is not None
    return subprocess.run(
        [bash, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=30
    )


@pytest.mark.parametrize(("cores", "expected"), [(1, " +S 1:1"), (2, " +S 1:1"), (4, "")])
def test_one_scheduler_on_two_cores_or_fewer(cores: int, expected: str) -> None:
    result = erl_args(None, cores)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == LOOPBACK + expected


@pytest.mark.parametrize(
    ("value", "cores", "expected"),
    [("3", 2, " +S 3:3"), ("default", 2, ""), ("1", 8, " +S 1:1")],
)
def test_the_variable_overrides(value: str, cores: int, expected: str) -> None:
    result = erl_args(value, cores)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == LOOPBACK + expected


@pytest.mark.parametrize("value", ["0", "00", "01", "two", "1:1", "-1", " 1"])
def test_a_bad_value_is_refused_by_name(value: str) -> None:
    result = erl_args(value, 2)
    assert result.returncode != 0
    assert "FACTBUS_RABBITMQ_SCHEDULERS must be a positive number or default" in result.stderr
    assert f"'{value}'" in result.stderr
    assert "+S" not in result.stdout
