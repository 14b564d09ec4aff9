"""`anting acls print` is the README's ACL table; `--format kafka-acls` is one Kafka
`kafka-acls.sh --add` command per ACL of the table, under the deployment's prefix."""

from __future__ import annotations

from typer.testing import CliRunner

from services.acls import acl_table, markdown_table
from services.cli import app


def test_print_is_the_table_and_kafka_acls_one_command_per_acl() -> None:
    """Markdown by default; with --prefix the topic names carry it in every command."""
    runner = CliRunner()
    out = runner.invoke(app, ["acls", "print"], env={"ANTING_TOPIC_PREFIX": ""})
    assert out.exit_code == 0, out.output
    assert out.output == markdown_table()
    out = runner.invoke(app, ["acls", "print", "--format", "kafka-acls", "--prefix", "prod."])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert len(lines) == len(acl_table("prod.")) and all(
        line.startswith("kafka-acls.sh --bootstrap-server ") and " --add --allow-principal 'User:" in line
        for line in lines)
    assert any("--topic 'prod.enriched-events'" in line and "--operation Write" in line
               and "User:anting-enrich" in line for line in lines)
    assert any("--transactional-id 'anting-enrich-'" in line and "prefixed" in line for line in lines)


def test_apply_names_the_refusal_and_exits_2(tmp_path: object) -> None:
    """A cluster nobody answers at: exit 2 with an error naming it, never a success."""
    from pathlib import Path

    config = Path(str(tmp_path)) / "admin.properties"
    config.write_text("bootstrap.servers=127.0.0.1:1\nsocket.timeout.ms=1000\nlog_level=0\n")
    out = CliRunner().invoke(app, ["acls", "apply", "--admin-config", str(config)])
    assert out.exit_code == 2, out.output
    assert "127.0.0.1:1" in out.output and "error" in out.output
