"""Every variable a service reads is in the README's Configuration table or in its own
README's (a setting nobody can find is a setting nobody can use)."""

from __future__ import annotations

import re

import pytest

from devtools import REPO_ROOT
from services.enrich.settings import EnrichSettings
from services.ingest.settings import IngestSettings
from services.insights.settings import InsightsSettings
from services.notify.settings import NotifySettings
from shared.settings import AntingSettings, variable_names


def documented(markdown: str) -> set[str]:
    """The variables a Markdown table's first column names, the shorthand
    `ANTING_SMTP_HOST` / `_PORT` read as `ANTING_SMTP_PORT` too."""
    names: set[str] = set()
    for line in markdown.splitlines():
        if not line.startswith("|"):
            continue
        tokens = re.findall(r"`([A-Z_][A-Z0-9_]*)`", line.split("|")[1])
        if not tokens:
            continue
        first = tokens[0]
        names.add(first)
        for token in tokens[1:]:
            if token.startswith("_"):
                parts = first.split("_")
                names.update("_".join(parts[:i]) + token for i in range(1, len(parts)))
            else:
                names.add(token)
    return names


def _configuration_section() -> str:
    readme = (REPO_ROOT / "README.md").read_text()
    start = readme.index("## Configuration")
    return readme[start:readme.index("\n## ", start + 5)]


@pytest.mark.parametrize(("cls", "service"), [(IngestSettings, "ingest"), (EnrichSettings, "enrich"),
                                              (NotifySettings, "notify"), (InsightsSettings, "insights")])
def test_every_variable_a_service_reads_is_documented(cls: type[AntingSettings], service: str) -> None:
    """The settings class's variables (its nested Kafka settings aside: `KAFKA_*`, listed
    once) all appear in a Configuration table."""
    docs = documented(_configuration_section()) | documented(
        (REPO_ROOT / "services" / service / "README.md").read_text())
    missing = [v for field, v in variable_names(cls).items() if field != "kafka" and v not in docs]
    assert not missing, f"not in README.md's Configuration table nor services/{service}/README.md: {missing}"


def test_every_variable_of_make_run_and_of_where_the_stack_is_is_documented() -> None:
    """`anting run`'s options read from the environment, and every variable of the profile
    (shared/where.py), are in the README's Configuration table."""
    import typer.main

    from services.cli import app
    from shared.where import OFFSET_VARIABLE, PROFILE_KEYS

    run = typer.main.get_command(app).commands["run"]  # type: ignore[attr-defined]
    envvars = {str(p.envvar) for p in run.params if getattr(p, "envvar", None)}
    assert "ANTING_RUN_KAFKA_PORT" in envvars
    wanted = envvars | set(PROFILE_KEYS) | {OFFSET_VARIABLE}
    missing = sorted(wanted - documented(_configuration_section()))
    assert not missing, f"not in README.md's Configuration table: {missing}"
