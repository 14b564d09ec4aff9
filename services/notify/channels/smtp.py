"""Email over SMTP (stdlib ``smtplib`` in a worker thread): a stable ``Message-ID``
``<idempotency-key@anting>``, a text and an HTML part. Header values are built
from data only after every control character and line separator is made a space
(CR and LF, and also NEL, U+2028 and U+2029, at which :mod:`email` splits a value
and which it would refuse), and :mod:`email` refuses any that remain, so header
injection is impossible and an event's headline cannot make its message unsendable.

Addresses go out as a relay without SMTPUTF8 (RFC 6531) takes them wherever they can: an
internationalised domain in A-labels (IDNA 2008 with UTS 46 mapping, the rule webhook
hosts follow: ``ops@bücher.example`` → ``ops@xn--bcher-kva.example``), in the envelope and
in ``To``. A local part that is not ASCII (``josé@example.org``) has no such form: through
a relay that does not offer SMTPUTF8 it is a permanent failure, at once and saying why —
before, it was retried for days. A non-ASCII ``Subject`` is written as RFC 2047
encoded-words made here, each holding whole characters (see :class:`EncodedSubject`).
"""

from __future__ import annotations

import asyncio
import base64
import re
import smtplib
from email.message import EmailMessage
from email.policy import SMTP, Policy
from email.utils import parseaddr

from shared.subscriptions import Subscription

from ..notification import Delivery
from ..rendering import html, text, title
from ..ssrf import ascii_host
from . import Result, Verdict

# C0 and C1 controls, DEL, and the line and paragraph separators: everything
# str.splitlines breaks at, which is what the email policy checks a value with
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def header_value(text: str, limit: int = 200) -> str:
    """Any control character or line separator (CR, LF, NEL, U+2028, ...) becomes a
    space: one line, always."""
    return _CONTROL.sub(" ", text).strip()[:limit]


#: RFC 2047: a line holding encoded-words is at most 76 characters long.
_ENCODED_LINE = 76
_WORD_OVERHEAD = len("=?utf-8?b??=")


def smtp_address(address: str) -> str:
    """``address`` with its domain in A-labels (IDNA 2008 with UTS 46 mapping; an ASCII
    domain, a domain literal included, is left as it is); the local part unchanged.
    Raises ``ValueError`` naming the address when IDNA cannot write its domain."""
    local, _, domain = address.rpartition("@")
    try:
        return f"{local}@{ascii_host(domain)}"
    except ValueError as exc:
        raise ValueError(f"{address}: {exc}") from None


def encoded_words(text: str, first_room: int = _ENCODED_LINE - len("Subject: ")) -> list[str]:
    """``text`` as RFC 2047 encoded-words (UTF-8, base64), each one whole characters, the
    first fitting in ``first_room`` characters and the others in a folded line of 76.
    Every character, spaces included, is inside a word: the space between two words is
    dropped by a reader, so the text decodes back exactly."""
    words: list[str] = []
    chunk = b""
    room = first_room
    for ch in text:
        b = ch.encode()
        if chunk and _WORD_OVERHEAD + 4 * -(-(len(chunk) + len(b)) // 3) > room:
            words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode()}?=")
            chunk, room = b"", _ENCODED_LINE - 1  # the next line starts with a space
        chunk += b
    if chunk or not words:
        words.append(f"=?utf-8?b?{base64.b64encode(chunk).decode()}?=")
    return words


class EncodedSubject(str):
    """A ``Subject`` the :mod:`email` package writes as made here: RFC 2047 encoded-words
    split on character boundaries, one per folded line. Python 3.11's folding of a long
    non-ASCII value drops the spaces between words (Korean and Greek headlines lost theirs);
    a header value with a ``name`` and a ``fold`` is written by calling its ``fold``
    (``email.policy.EmailPolicy``). Reading ``msg["Subject"]`` gives the text itself."""

    name = "Subject"
    defects: tuple[()] = ()

    def fold(self, *, policy: Policy) -> str:
        """The header's lines, ``policy``'s line separator after each."""
        sep = policy.linesep
        return f"{self.name}: " + f"{sep} ".join(encoded_words(str(self))) + sep


class NeedsSMTPUTF8(Exception):
    """An address of the message (``addresses``) has a non-ASCII local part and the relay
    does not offer SMTPUTF8: nothing can be sent, now or later."""

    def __init__(self, addresses: list[str]) -> None:
        super().__init__(", ".join(addresses))
        self.addresses = addresses


def message_id(key: str) -> str:
    """The ``Message-ID`` of a delivery: ``<idempotency-key@anting>``."""
    return f"<{key}@anting>"


def build_message(sender: str, sub: Subscription, delivery: Delivery) -> EmailMessage:
    """The email of ``delivery`` to ``sub``'s addresses (their domains in A-labels, see
    :func:`smtp_address`); raises ``ValueError`` or ``TypeError`` when :mod:`email`
    refuses a value or IDNA cannot write a domain."""
    assert sub.channel.type == "email"
    msg = EmailMessage(policy=SMTP)
    msg["From"] = header_value(sender)
    msg["To"] = ", ".join(smtp_address(header_value(a)) for a in sub.channel.to)
    subject = header_value(title(delivery))
    msg["Subject"] = subject if subject.isascii() else EncodedSubject(subject)
    msg["Message-ID"] = message_id(delivery.key)
    msg["X-Anting-Subscription"] = header_value(sub.id)
    # an event is its (source, id) pair: both, never cut short
    msg["X-Anting-Event-Id"] = header_value(delivery.event_id, 2048)
    msg["X-Anting-Event-Source"] = header_value(delivery.event_source, 2048)
    msg.set_content(text(delivery))
    msg.add_alternative(html(delivery), subtype="html")
    return msg


class EmailSender:
    def __init__(
        self, host: str, port: int, sender: str, *, username: str | None = None,
        password: str | None = None, starttls: bool = False, timeout: float = 15.0,
    ) -> None:
        self.host, self.port, self.sender = host, port, sender
        self.username, self.password, self.starttls, self.timeout = username, password, starttls, timeout

    def _send_sync(self, msg: EmailMessage, sender: str, to: list[str]) -> None:
        """Send ``msg`` with the envelope ``sender`` → ``to``; raises :class:`NeedsSMTPUTF8`
        when an address is not ASCII and the relay does not offer SMTPUTF8 (smtplib's own
        ``SMTPNotSupportedError`` would read as any other failure, retried)."""
        with smtplib.SMTP(self.host, self.port, timeout=self.timeout) as smtp:
            if self.starttls:
                smtp.starttls()
            if self.username:
                smtp.login(self.username, self.password or "")
            smtp.ehlo_or_helo_if_needed()
            international = [a for a in (sender, *to) if not a.isascii()]
            if international and not smtp.has_extn("smtputf8"):
                raise NeedsSMTPUTF8(international)
            smtp.send_message(msg, sender, to)

    async def send(self, sub: Subscription, delivery: Delivery) -> Result:
        """Send the delivery's email: ``ok`` once the relay accepted it; ``retry`` for a 4xx,
        a connection or protocol failure; ``permanent`` for a 5xx, a message :mod:`email`
        refuses, a domain IDNA cannot write, or a non-ASCII address the relay cannot take
        (no SMTPUTF8)."""
        assert sub.channel.type == "email"
        try:
            msg = build_message(self.sender, sub, delivery)
            to = [smtp_address(header_value(a)) for a in sub.channel.to]
            sender = smtp_address(parseaddr(header_value(self.sender))[1] or header_value(self.sender))
        except (ValueError, TypeError) as exc:
            return Result("permanent", None, f"cannot build message: {exc}")
        try:
            await asyncio.to_thread(self._send_sync, msg, sender, to)
        except NeedsSMTPUTF8 as exc:
            return Result("permanent", None, (
                f"{exc}: a non-ASCII local part needs SMTPUTF8, which the relay "
                f"{self.host}:{self.port} does not offer"))
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [c for c, _ in exc.recipients.values()]
            if codes and all(400 <= c < 500 for c in codes):
                return Result("retry", codes[0], f"recipients refused: {exc.recipients}")
            return Result("permanent", codes[0] if codes else None, f"recipients refused: {exc.recipients}")
        except smtplib.SMTPResponseException as exc:
            verdict: Verdict = "retry" if 400 <= exc.smtp_code < 500 else "permanent"
            return Result(verdict, exc.smtp_code, f"SMTP {exc.smtp_code}: {exc.smtp_error!r}")
        except (OSError, smtplib.SMTPException) as exc:
            return Result("retry", None, f"{type(exc).__name__}: {exc}")
        return Result("ok", 250)

    async def aclose(self) -> None:
        return None


__all__ = ["EmailSender", "EncodedSubject", "NeedsSMTPUTF8", "build_message", "encoded_words", "header_value",
           "message_id", "smtp_address"]
