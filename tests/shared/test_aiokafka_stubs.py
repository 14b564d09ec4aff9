"""aiokafka ships no types; the stubs in typings/ make mypy check every call on a producer
or a consumer: a method that does not exist, or a wrong argument, fails `make lint`."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

WRONG = '''
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

async def f(p: AIOKafkaProducer, c: AIOKafkaConsumer) -> None:
    await p.sendd("topic", b"v")
    c.seek(TopicPartition("t", 0), "12")
'''


def test_mypy_refuses_a_method_aiokafka_does_not_have(tmp_path: Path) -> None:
    """A misspelt producer method and a consumer seek to a string are both type errors."""
    module = tmp_path / "wrong_calls.py"
    module.write_text(WRONG)
    out = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(REPO / "pyproject.toml"),
                          "--no-incremental", "--strict", str(module)],
                         cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 1, out.stdout + out.stderr
    assert '"AIOKafkaProducer" has no attribute "sendd"' in out.stdout, out.stdout
    assert 'Argument 2 to "seek" of "AIOKafkaConsumer" has incompatible type "str"' in out.stdout, out.stdout

