"""Articles from files (`anting publish`, `--watch`) against the real broker: each one
lands on `documents` exactly as POST /v1/documents would publish its bytes (same id,
source, text), beside the event files; an empty, binary, undecodable or too large file
is refused with its reason and publishes nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import orjson

from devtools.testing import env_for, read_topic
from services.ingest.document_files import DocumentOptions, expand, read_document
from services.ingest.documents import content_id, decode_document
from services.ingest.files import Summary
from services.ingest.watch import DONE, FAILED, watch
from shared.documents import parse_document
from shared.settings import AntingSettings
from shared.topics import ANNOUNCEMENTS, DOCUMENTS
from tests.ingest.conftest import announcement

ANTING = str(Path(sys.executable).parent / "anting")
SEED = Path(__file__).parents[2] / "docs" / "seed" / "world-metaverse-conference.txt"
HTML = (b"<html><head><title>SAIC signs</title><script>track()</script></head>"
        b"<body><h1>SAIC signs</h1><p>SAIC Motor and Anting signed an agreement.</p></body></html>")
MARKDOWN = "# 上汽集团签约\n\n安亭镇人民政府与上海汽车集团股份有限公司签署合作协议。\n"


def _run(args: list[str], settings: AntingSettings, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ANTING, "publish", "--quiet", *args], env=env_for(settings, **env),
                          capture_output=True, text=True, timeout=120)


def test_a_file_is_read_as_its_body_would_be_posted(tmp_path: Path) -> None:
    """The document of a file equals POST's of the same bytes with the suffix's media type."""
    for name, body, media in (("a.txt", SEED.read_bytes(), "text/plain"),
                              ("b.md", MARKDOWN.encode(), "text/markdown"),
                              ("c.HTML", HTML, "text/html")):
        (tmp_path / name).write_bytes(body)
        doc = read_document(tmp_path / name, DocumentOptions())
        posted, _ = decode_document(body, media, source="/anting/ingest")
        assert doc.model_dump(exclude={"received_at"}) == posted.model_dump(exclude={"received_at"})
        assert doc.id == content_id(doc.text)


def test_a_folder_is_its_events_and_articles(tmp_path: Path) -> None:
    """A folder expands to its .json/.ndjson/.txt/.md/.html files, sorted, subfolders
    included; hidden names, names still being written and other suffixes are not read."""
    for name in ("b.md", "a.ndjson", "sub/c.html", "notes.docx", ".hidden.txt", "d.txt.part",
                 ".done/e.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    (tmp_path / "empty").mkdir()
    files, empty = expand([str(tmp_path), "-", str(tmp_path / "empty")])
    assert files == [str(tmp_path / n) for n in ("a.ndjson", "b.md", "sub/c.html")] + ["-"]
    assert empty == [str(tmp_path / "empty")]


async def test_cli_publishes_articles_and_events_and_refuses_bad_files(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """A folder of articles and events: the events on their topic, each article once on
    `documents` keyed by its content hash; each refused file named with its reason, exit 1."""
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "seed.txt").write_bytes(SEED.read_bytes())
    (inbox / "story.md").write_text(MARKDOWN)
    (inbox / "page.html").write_bytes(HTML)
    (inbox / "events.ndjson").write_bytes(orjson.dumps(announcement("d1")) + b"\n")
    (inbox / "empty.txt").write_bytes(b" \n\n")
    (inbox / "scan.html").write_bytes(b"%PDF-1.7\n%\xe2\xe3\xcf\xd3")
    (inbox / "gbk.txt").write_bytes("上汽集团与安亭镇签约。".encode("gb18030"))
    (inbox / "huge.txt").write_bytes(b"SAIC signs. " * 10_000)

    result = await asyncio.to_thread(_run, [str(inbox)], topics,
                                     ANTING_INGEST_MAX_DOCUMENT_BODY_BYTES="65536")
    assert result.returncode == 1, result.stderr
    err = " ".join(result.stderr.split())
    assert "4 accepted, 4 rejected, 4 document(s) refused" in err
    assert "dlq" not in err  # refused articles are not dead-lettered
    for name, reason in (("empty.txt", "no text"), ("scan.html", "a PDF file"),
                         ("gbk.txt", "not utf-8"), ("huge.txt", "over 65536 bytes")):
        assert name in err and reason in err, (name, err)

    docs = [parse_document(r.value or b"")
            for r in await read_topic(topics, topics.topic(DOCUMENTS), expect=3, timeout=20)]
    by_type = {d.media_type: d for d in docs}
    assert sorted(by_type) == ["text/html", "text/markdown", "text/plain"] and len(docs) == 3
    assert by_type["text/plain"].text == SEED.read_text()
    assert by_type["text/html"].title == "SAIC signs"
    assert "track()" not in by_type["text/html"].text
    assert all(d.id == content_id(d.text) and d.source == "/anting/ingest" for d in docs)
    [ann] = await read_topic(topics, topics.topic(ANNOUNCEMENTS), expect=1, timeout=20)
    assert orjson.loads(ann.value or b"")["id"] == "ann-d1"


async def test_cli_source_and_charset_options(topics: AntingSettings, tmp_path: Path) -> None:
    """--source is the articles' source, --charset their charset; a bad --source is exit 2."""
    gbk = tmp_path / "gbk.txt"
    gbk.write_bytes("上汽集团与安亭镇签约。".encode("gb18030"))
    ok = await asyncio.to_thread(_run, ["--source", "/press/example", "--charset", "gb18030",
                                        str(gbk)], topics)
    assert ok.returncode == 0, ok.stderr
    [rec] = await read_topic(topics, topics.topic(DOCUMENTS), expect=1, timeout=20)
    doc = parse_document(rec.value or b"")
    assert (doc.text, doc.source) == ("上汽集团与安亭镇签约。", "/press/example")
    bad = await asyncio.to_thread(_run, ["--source", "a\nb", str(gbk)], topics)
    assert bad.returncode == 2 and "--source" in bad.stderr


async def test_watch_publishes_articles_whole_and_moves_refused_ones_to_failed(
    topics: AntingSettings, tmp_path: Path
) -> None:
    """A watched folder: an article once quiet goes to `documents` and .done/, an empty one
    to .failed/ with nothing published."""
    folder = tmp_path / "inbox"
    folder.mkdir()
    for name, body in (("story.md", MARKDOWN.encode()), ("empty.txt", b"")):
        (folder / f"{name}.part").write_bytes(body)
        os.replace(folder / f"{name}.part", folder / name)
    seen: dict[str, Summary | None] = {}
    await watch(topics, folder, stop=asyncio.Event(), once=True, settle=0.2,
                on_file=lambda f, s, _: seen.__setitem__(f.name, s),
                documents=DocumentOptions(source="/press/watch"))
    assert [p.name for p in (folder / DONE).iterdir()] == ["story.md"]
    assert [p.name for p in (folder / FAILED).iterdir()] == ["empty.txt"]
    story, empty = seen["story.md"], seen["empty.txt"]
    assert story is not None and story.document_id == content_id(MARKDOWN)
    assert empty is not None and empty.refused is not None and "no text" in empty.refused
    [rec] = await read_topic(topics, topics.topic(DOCUMENTS), expect=1, timeout=20)
    doc = parse_document(rec.value or b"")
    assert (doc.id, doc.source, doc.text) == (content_id(MARKDOWN), "/press/watch", MARKDOWN)
