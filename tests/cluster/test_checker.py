"""The checker on hand-made histories: each kind of error is reported as that error, and
a clean history as clean."""

from __future__ import annotations

from devtools.checker import Delivery, Input, Output, check, check_deliveries


def ev(n: int) -> tuple[str, str]:
    return ("/chaos", f"e{n}")


def clean() -> tuple[list[Input], list[Output]]:
    """Four events of one key in input partition 0, enriched in order to output partition 1."""
    ins = [Input(ev(n), b"k", partition=0, offset=n) for n in range(4)]
    outs = [Output(ev(n), b"k", 1, 10 + n) for n in range(4)]
    return ins, outs


def test_a_clean_history_is_clean() -> None:
    """Every input once, in order, nothing aborted: no anomaly, and the counts say so."""
    ins, outs = clean()
    report = check(ins, outs, concurrent=outs[:2])
    assert report.ok
    assert report.counts()["inputs"] == 4 and report.counts()["outputs"] == 4
    assert report.counts()["lost"] == 0


def test_lost() -> None:
    """An acknowledged input with no enriched record is lost; an unacknowledged one is not."""
    ins, outs = clean()
    ins.append(Input(ev(9), b"k", acked=False))
    report = check(ins, outs[:3] + outs[4:])
    assert report.lost == [ev(3)]
    assert report.duplicated == {} and report.order == [] and report.aborted_reads == []


def test_duplicated() -> None:
    """Two enriched records of one input event: duplicated by one."""
    ins, outs = clean()
    report = check(ins, [*outs, Output(ev(2), b"k", 1, 20)])
    assert report.duplicated == {ev(2): 1}
    assert not report.ok and report.counts()["duplicated"] == 1


def test_an_event_sent_twice_may_come_out_twice() -> None:
    """A client retry that wrote the same event twice (both read back) may yield two outputs."""
    ins, outs = clean()
    ins.append(Input(ev(1), b"k", partition=0, offset=7))
    report = check(ins, [*outs, Output(ev(1), b"k", 1, 30)])
    assert report.duplicated == {}


def test_aborted_read() -> None:
    """A record the concurrent reader saw that the final reader does not have is an aborted read."""
    ins, outs = clean()
    ghost = Output(ev(1), b"k", 1, 99)
    report = check(ins, outs, concurrent=[outs[0], ghost])
    assert report.aborted_reads == [ghost]


def test_order() -> None:
    """One key's events coming out in another order than they went in: an order violation."""
    ins, _ = clean()
    swapped = [Output(ev(0), b"k", 1, 10), Output(ev(2), b"k", 1, 11),
               Output(ev(1), b"k", 1, 12), Output(ev(3), b"k", 1, 13)]
    report = check(ins, swapped)
    assert report.order == [(b"k", ev(2), ev(1))]
    assert report.lost == [] and report.duplicated == {}


def test_unseen() -> None:
    """An acknowledged write that no reader of the input topic found is unseen (and lost)."""
    ins, outs = clean()
    ins.append(Input(ev(5), b"k"))
    report = check(ins, outs)
    assert report.unseen == [ev(5)]
    assert report.lost == [ev(5)]


def test_undelivered_and_a_changed_webhook_id() -> None:
    """A wanted (event, subscription) pair never delivered, and a repeat under another
    webhook-id, are each reported; a repeat under the same id is fine."""
    ins, outs = clean()
    deliveries = [Delivery(ev(0), "s1", "msg_a"), Delivery(ev(0), "s1", "msg_a"),
                  Delivery(ev(1), "s1", "msg_b"), Delivery(ev(1), "s1", "msg_c")]
    report = check_deliveries(check(ins, outs), [(ev(0), "s1"), (ev(1), "s1"), (ev(2), "s1")], deliveries)
    assert report.undelivered == [(ev(2), "s1")]
    assert report.webhook_id_changed == [Delivery(ev(1), "s1", "msg_c")]
    assert "undelivered 1" in report.summary() and "webhook-id-changed 1" in report.summary()
    assert report.pairs == 3 and report.deliveries == 4


def test_a_first_delivery_under_the_wrong_webhook_id() -> None:
    """With the webhook-id each pair must carry, a first delivery under another one is
    reported even when its repeats agree with it."""
    ins, outs = clean()
    deliveries = [Delivery(ev(0), "s1", "msg_s1_e0"), Delivery(ev(1), "s1", "msg_wrong"),
                  Delivery(ev(1), "s1", "msg_wrong")]
    report = check_deliveries(check(ins, outs), [(ev(0), "s1"), (ev(1), "s1")], deliveries,
                              expected=lambda event, sub: f"msg_{sub}_{event[1]}")
    assert report.webhook_id_changed == [Delivery(ev(1), "s1", "msg_wrong")]
    assert not report.undelivered and not report.ok


def test_an_event_written_twice_keeps_its_order_by_copy() -> None:
    """An event a client wrote twice (before and after another one of its key) comes out
    twice, each copy in its input's place: no anomaly; its copies swapped with the other
    event's is an order violation."""
    ins = [Input(ev(0), b"k", partition=0, offset=0), Input(ev(1), b"k", partition=0, offset=1),
           Input(ev(0), b"k", partition=0, offset=2)]
    in_place = [Output(ev(0), b"k", 1, 10), Output(ev(1), b"k", 1, 11), Output(ev(0), b"k", 1, 12)]
    assert check(ins, in_place).ok
    swapped = [Output(ev(0), b"k", 1, 10), Output(ev(0), b"k", 1, 11), Output(ev(1), b"k", 1, 12)]
    assert check(ins, swapped).order == [(b"k", ev(0), ev(1))]
