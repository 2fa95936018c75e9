"""The stream machine (proxyd.stream): every (state, input) pair, then the rules behind the table.

The first test is parametrised over all 9 x 22 pairs. Each case brings a fresh machine to the
state along one canonical path (a POST with a body still coming, from an HTTP/2 client; for the
tunnel states an RFC 8441 extended CONNECT whose backend answered 101), applies
the input with standard arguments and compares the next state and the kinds of the commands, in
order, with ``EXPECTED`` below — a table written from the RFC and DESIGN §4-5, independently of
the implementation's table. A pair missing from ``EXPECTED`` must be refused with
IllegalTransition and leave the state as it was.

The tests after it check the rules with real arguments: retries (RFC 9110 §9.2.2, issue item
9), Content-Length against body bytes, acknowledgements only for bytes the backend took, the
error answer through the window, truncated and overlong responses, 100-continue, trailers.
"""

import pytest
from hypothesis import given, settings, strategies as st

from proxyd import events as ev
from proxyd import stream as sm
from proxyd.bridge import Policy, Translator, backend_request
from proxyd.config import HeaderPolicy
from proxyd.errors import CONNECT_ERROR, NO_ERROR, PROTOCOL_ERROR
from proxyd.websocket import accept_for
from tests.support import gated

S = sm  # states, inputs and commands by name
POLICY = Policy(headers=HeaderPolicy(x_forwarded_for="off", x_forwarded_proto=False, via=False),
                tls=True)


class Window:
    """The window query: bytes the client can take (mutable per test)."""

    def __init__(self, size=1 << 20):
        self.size = size

    def __call__(self):
        return self.size


def make(method=b"POST", end_stream=False, headers=(), flow_controlled=True, max_body=0,
         window=None, early_limit=64 * 1024, http_version=b"2", protocol=None):
    """A machine for a gated request (``protocol``: an RFC 8441 extended CONNECT)."""
    head = [(b":method", method), (b":scheme", b"https"), (b":authority", b"example.com"),
            (b":path", b"/p")]
    if protocol is not None:
        head.append((b":protocol", protocol))
    head.extend(headers)
    request = gated(ev.RequestReceived(stream_id=1, headers=head, end_stream=end_stream,
                                       http_version=http_version), extended_connect=True)
    return sm.StreamMachine(request, family="h2", flow_controlled=flow_controlled,
                            policy=Translator(POLICY, b"example.com"), window=window or Window(),
                            max_body=max_body, early_limit=early_limit)


ARGS = {
    S.START: (), S.READY: (b"1.1", b"127.0.0.1:8081"), S.UNREACHABLE: (False,), S.BUSY: (),
    S.LOST: (False, False, False), S.WRITTEN: (False,), S.REQ_DATA: (b"abc", 3),
    S.REQ_END: ((),), S.CLIENT_RESET: (), S.WINDOW: (), S.INFO: (103, [(b"link", b"</a>")]),
    S.HEAD: (200, [(b"x-a", b"1")]), S.DATA: (b"0123",), S.TRAILERS: ([(b"x-t", b"1")],),
    S.END: (), S.INVALID: ("bad_response", "test"), S.READ_TIMEOUT: (), S.STALL_TIMEOUT: (),
    S.FAIL: ("internal_error", "test"), S.UPGRADED: (101, [], None), S.IDLE_TIMEOUT: (),
    S.WHOLE: (200, [(b"x-a", b"1")], b"0123"),
}


def switch_args(m):
    """UPGRADED's arguments for a tunnel machine: a valid 101 to its backend handshake."""
    breq = backend_request(m.request, client_ip=b"127.0.0.1", policy=POLICY)
    return (S.UPGRADED, 101, [(b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
                              (b"sec-websocket-accept", accept_for(breq.key))], breq)


def tunnel(window=None):
    """A machine for an RFC 8441 WebSocket (extended CONNECT) from an HTTP/2 client."""
    return make(b"CONNECT", protocol=b"websocket", window=window,
                headers=[(b"sec-websocket-version", b"13")])


def bring(state):
    """A fresh machine in ``state`` by the canonical path; its window is returned too."""
    window = Window()
    m = tunnel(window) if state in (S.TUNNEL, S.TUNNEL_BLOCKED) else make(window=window)
    path = {
        S.IDLE: [],
        S.ROUTING: [(S.START,)],
        S.AWAITING: [(S.START,), ARGS_OF(S.READY)],
        S.RESPONDING: [(S.START,), ARGS_OF(S.READY), ARGS_OF(S.HEAD)],
        S.BLOCKED: [(S.START,), ARGS_OF(S.READY), ARGS_OF(S.HEAD), "shut", (S.DATA, b"01234567")],
        S.FLUSHING: [(S.START,), ARGS_OF(S.READY), ARGS_OF(S.HEAD), "shut", (S.DATA, b"01234567"),
                     (S.END,)],
        S.DONE: [(S.START,), (S.CLIENT_RESET,)],
        S.TUNNEL: [(S.START,), ARGS_OF(S.READY), "switch"],
        S.TUNNEL_BLOCKED: [(S.START,), ARGS_OF(S.READY), "switch", "shut",
                           (S.DATA, b"01234567")],
    }[state]
    for step in path:
        if step == "shut":
            window.size = 4
            continue
        if step == "switch":
            step = switch_args(m)
        m.handle(*step)
    window.size = 1 << 20
    assert m.state is state
    return m


def ARGS_OF(event):  # noqa: N802 - reads like a constant in the paths above
    """``(event, *standard args)``."""
    return (event, *ARGS[event])


# The fail answer before the head, with a request still unfinished (the body is coming): the
# table's error head and body go out at once (the window is open), then RST NO_ERROR asks the
# client to stop sending.
ANSWER = [S.LOG, S.CANCEL, S.RESPOND, S.SEND, S.END_RESPONSE, S.RESET, S.FINISH]
ANSWER_WAITING = [S.LOG, S.CANCEL, S.CANCEL_WAIT, S.RESPOND, S.SEND, S.END_RESPONSE, S.RESET,
                  S.FINISH]
ANSWER_ATTACHED = [S.LOG, S.CANCEL, S.DISCARD_BACKEND, S.RESPOND, S.SEND, S.END_RESPONSE, S.RESET,
                   S.FINISH]
RESET_ATTACHED = [S.LOG, S.DISCARD_BACKEND, S.RESET, S.FINISH]

EXPECTED = {
    (S.IDLE, S.START): (S.ROUTING, [S.ARM, S.ACQUIRE]),
    (S.IDLE, S.FAIL): (S.DONE, ANSWER),
    (S.IDLE, S.CLIENT_RESET): (S.DONE, [S.FINISH]),

    (S.ROUTING, S.READY): (S.AWAITING, [S.SEND_HEAD]),
    (S.ROUTING, S.UNREACHABLE): (S.DONE, ANSWER_WAITING),
    (S.ROUTING, S.BUSY): (S.DONE, ANSWER_WAITING),
    (S.ROUTING, S.REQ_DATA): (S.ROUTING, []),
    (S.ROUTING, S.REQ_END): (S.ROUTING, []),
    (S.ROUTING, S.WINDOW): (S.ROUTING, []),
    (S.ROUTING, S.READ_TIMEOUT): (S.DONE, ANSWER_WAITING),
    (S.ROUTING, S.CLIENT_RESET): (S.DONE, [S.CANCEL_WAIT, S.FINISH]),
    (S.ROUTING, S.FAIL): (S.DONE, ANSWER_WAITING),

    (S.AWAITING, S.REQ_DATA): (S.AWAITING, [S.SEND_BODY]),
    (S.AWAITING, S.REQ_END): (S.AWAITING, [S.END_BODY]),
    (S.AWAITING, S.WRITTEN): (S.AWAITING, []),
    (S.AWAITING, S.INFO): (S.AWAITING, [S.INFORM]),
    (S.AWAITING, S.HEAD): (S.RESPONDING, [S.RESPOND]),
    # HEAD, DATA and END of one backend read in one step (the request body is still coming).
    (S.AWAITING, S.WHOLE): (S.DONE, [S.RESPOND, S.SEND, S.CANCEL, S.RELEASE_BACKEND,
                                     S.END_RESPONSE, S.RESET, S.FINISH]),
    (S.AWAITING, S.LOST): (S.DONE, ANSWER),
    (S.AWAITING, S.INVALID): (S.DONE, ANSWER_ATTACHED),
    (S.AWAITING, S.READ_TIMEOUT): (S.DONE, ANSWER_ATTACHED),
    (S.AWAITING, S.WINDOW): (S.AWAITING, []),
    (S.AWAITING, S.CLIENT_RESET): (S.DONE, [S.DISCARD_BACKEND, S.FINISH]),
    (S.AWAITING, S.FAIL): (S.DONE, ANSWER_ATTACHED),

    (S.RESPONDING, S.DATA): (S.RESPONDING, [S.SEND]),
    (S.RESPONDING, S.TRAILERS): (S.RESPONDING, []),
    (S.RESPONDING, S.END): (S.DONE, [S.CANCEL, S.RELEASE_BACKEND, S.END_RESPONSE, S.RESET,
                                     S.FINISH]),
    (S.RESPONDING, S.REQ_DATA): (S.RESPONDING, [S.SEND_BODY]),
    (S.RESPONDING, S.REQ_END): (S.RESPONDING, [S.END_BODY]),
    (S.RESPONDING, S.WRITTEN): (S.RESPONDING, []),
    (S.RESPONDING, S.WINDOW): (S.RESPONDING, []),
    (S.RESPONDING, S.LOST): (S.DONE, [S.LOG, S.RESET, S.FINISH]),
    (S.RESPONDING, S.INVALID): (S.DONE, RESET_ATTACHED),
    (S.RESPONDING, S.READ_TIMEOUT): (S.DONE, RESET_ATTACHED),
    (S.RESPONDING, S.CLIENT_RESET): (S.DONE, [S.DISCARD_BACKEND, S.FINISH]),
    (S.RESPONDING, S.FAIL): (S.DONE, RESET_ATTACHED),

    (S.BLOCKED, S.DATA): (S.BLOCKED, []),
    (S.BLOCKED, S.WINDOW): (S.RESPONDING, [S.SEND, S.CANCEL, S.RESUME_BACKEND, S.ARM]),
    (S.BLOCKED, S.TRAILERS): (S.BLOCKED, []),
    (S.BLOCKED, S.END): (S.FLUSHING, [S.RELEASE_BACKEND]),
    (S.BLOCKED, S.REQ_DATA): (S.BLOCKED, [S.SEND_BODY]),
    (S.BLOCKED, S.REQ_END): (S.BLOCKED, [S.END_BODY]),
    (S.BLOCKED, S.WRITTEN): (S.BLOCKED, []),
    (S.BLOCKED, S.LOST): (S.DONE, [S.LOG, S.RESET, S.FINISH]),
    (S.BLOCKED, S.INVALID): (S.DONE, RESET_ATTACHED),
    (S.BLOCKED, S.STALL_TIMEOUT): (S.DONE, RESET_ATTACHED),
    (S.BLOCKED, S.CLIENT_RESET): (S.DONE, [S.DISCARD_BACKEND, S.FINISH]),
    (S.BLOCKED, S.FAIL): (S.DONE, RESET_ATTACHED),

    (S.FLUSHING, S.WINDOW): (S.DONE, [S.SEND, S.CANCEL, S.END_RESPONSE, S.RESET, S.FINISH]),
    (S.FLUSHING, S.REQ_DATA): (S.FLUSHING, [S.ACK]),
    (S.FLUSHING, S.REQ_END): (S.FLUSHING, []),
    (S.FLUSHING, S.READY): (S.FLUSHING, [S.RELEASE_BACKEND]),  # a connect that came too late
    (S.FLUSHING, S.UNREACHABLE): (S.FLUSHING, []),  # or failed too late
    (S.FLUSHING, S.STALL_TIMEOUT): (S.DONE, [S.LOG, S.RESET, S.FINISH]),
    (S.FLUSHING, S.CLIENT_RESET): (S.DONE, [S.FINISH]),
    (S.FLUSHING, S.FAIL): (S.DONE, [S.LOG, S.RESET, S.FINISH]),

    # Tunnels (RFC 6455 §4.1, RFC 8441 §5, RFC 9113 §8.5): bytes both ways, END_STREAM is a
    # half-close, the backend's close ends the client's stream, failures reset; the backend
    # connection is closed, never released to the pool.
    (S.AWAITING, S.UPGRADED): (S.DONE, ANSWER_ATTACHED),  # a POST that asked for no switch

    (S.TUNNEL, S.REQ_DATA): (S.TUNNEL, [S.SEND_BODY, S.ARM]),
    (S.TUNNEL, S.REQ_END): (S.TUNNEL, [S.END_BODY]),
    (S.TUNNEL, S.WRITTEN): (S.TUNNEL, []),
    (S.TUNNEL, S.DATA): (S.TUNNEL, [S.ARM, S.SEND]),
    (S.TUNNEL, S.WINDOW): (S.TUNNEL, []),
    (S.TUNNEL, S.END): (S.DONE, [S.CANCEL, S.CLOSE_BACKEND, S.END_RESPONSE, S.RESET, S.FINISH]),
    (S.TUNNEL, S.LOST): (S.DONE, [S.CANCEL, S.LOG, S.RESET, S.FINISH]),
    (S.TUNNEL, S.INVALID): (S.DONE, [S.CANCEL] + RESET_ATTACHED),
    (S.TUNNEL, S.IDLE_TIMEOUT): (S.DONE, [S.CANCEL] + RESET_ATTACHED),
    (S.TUNNEL, S.CLIENT_RESET): (S.DONE, [S.CANCEL, S.CLOSE_BACKEND, S.FINISH]),
    (S.TUNNEL, S.FAIL): (S.DONE, [S.CANCEL] + RESET_ATTACHED),

    (S.TUNNEL_BLOCKED, S.REQ_DATA): (S.TUNNEL_BLOCKED, [S.SEND_BODY, S.ARM]),
    (S.TUNNEL_BLOCKED, S.REQ_END): (S.TUNNEL_BLOCKED, [S.END_BODY]),
    (S.TUNNEL_BLOCKED, S.WRITTEN): (S.TUNNEL_BLOCKED, []),
    (S.TUNNEL_BLOCKED, S.DATA): (S.TUNNEL_BLOCKED, []),
    (S.TUNNEL_BLOCKED, S.WINDOW): (S.TUNNEL, [S.SEND, S.ARM, S.RESUME_BACKEND]),
    (S.TUNNEL_BLOCKED, S.END): (S.FLUSHING, [S.CANCEL, S.CLOSE_BACKEND, S.ARM]),
    (S.TUNNEL_BLOCKED, S.LOST): (S.DONE, [S.CANCEL, S.LOG, S.RESET, S.FINISH]),
    (S.TUNNEL_BLOCKED, S.INVALID): (S.DONE, [S.CANCEL] + RESET_ATTACHED),
    (S.TUNNEL_BLOCKED, S.IDLE_TIMEOUT): (S.DONE, [S.CANCEL] + RESET_ATTACHED),
    (S.TUNNEL_BLOCKED, S.CLIENT_RESET): (S.DONE, [S.CANCEL, S.CLOSE_BACKEND, S.FINISH]),
    (S.TUNNEL_BLOCKED, S.FAIL): (S.DONE, [S.CANCEL] + RESET_ATTACHED),

    (S.DONE, S.READY): (S.DONE, [S.RELEASE_BACKEND]),
    (S.DONE, S.REQ_DATA): (S.DONE, [S.ACK]),
}
for _event in S.INPUTS:
    EXPECTED.setdefault((S.DONE, _event), (S.DONE, []))

PAIRS = [(state, event) for state in S.STATES for event in S.INPUTS]


@pytest.mark.parametrize("state, event", PAIRS, ids=[f"{s}-{e}" for s, e in PAIRS])
def test_every_pair(state, event):
    """One (state, input) pair: the next state and the commands, or IllegalTransition."""
    m = bring(state)
    expected = EXPECTED.get((state, event))
    if expected is None:
        with pytest.raises(sm.IllegalTransition):
            m.handle(event, *ARGS[event])
        assert m.state is state
        return
    commands = m.handle(event, *ARGS[event])
    assert (m.state, [c[0] for c in commands]) == expected


def test_the_implementation_table_allows_exactly_the_expected_pairs():
    """The implementation's table and the expectations above list the same legal pairs."""
    assert set(sm.TRANSITIONS) == set(EXPECTED)


@settings(max_examples=400, deadline=None)
@given(method=st.sampled_from([b"GET", b"HEAD", b"POST"]), end_stream=st.booleans(),
       status=st.sampled_from([200, 204, 206, 304, 404, 502]),
       length=st.one_of(st.none(), st.integers(0, 12)), body=st.binary(max_size=12),
       window=st.integers(0, 16), flow_controlled=st.booleans(),
       extra=st.sampled_from([[], [(b"transfer-encoding", b"chunked")], [(b"x-a", b"1")],
                              [(b"connection", b"close")], [(b"content-length", b"1, 2")]]))
def test_whole_is_head_data_and_end_in_turn(method, end_stream, status, length, body, window,
                                            flow_controlled, extra):
    """WHOLE (a response whose head, body and end came in one read) gives exactly the commands
    and the state that HEAD, DATA (when there is a body) and END give one after the other, fed
    as the relay feeds them (it stops once the backend connection was let go), whatever the
    method, status, length, body, window and client."""
    headers = list(extra) + ([] if length is None else [(b"content-length", b"%d" % length)])

    def ready():
        m = make(method, end_stream, flow_controlled=flow_controlled, window=Window(window))
        m.handle(S.START)
        m.handle(S.READY, b"1.1", b"b:1")
        return m

    fused = ready()
    fused_commands = fused.handle(S.WHOLE, status, list(headers), body)
    steps = ready()
    step_commands = steps.handle(S.HEAD, status, list(headers))
    for event in ([(S.DATA, body)] if body else []) + [(S.END,)]:
        if not steps.attached or steps.state not in (S.RESPONDING, S.BLOCKED):
            break
        step_commands += steps.handle(*event)
    assert (fused.state, fused_commands) == (steps.state, step_commands)
    assert (fused.status, fused.reason, fused.sent) == (steps.status, steps.reason, steps.sent)


# -- retries (RFC 9110 §9.2.2; issue item 9) ----------------------------------------------------

def awaiting(method=b"GET", end_stream=True, headers=()):
    """A machine with a backend attached and the head sent."""
    m = make(method, end_stream, headers)
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    return m


@pytest.mark.parametrize("method, end_stream, unprocessed, reused, got, body, retried", [
    (b"GET", True, False, True, False, False, True),      # keep-alive race, idempotent
    (b"PUT", True, False, True, False, False, True),      # idempotent without a body
    (b"POST", True, False, True, False, False, False),    # item 9: POST without a body
    (b"GET", True, False, False, False, False, False),    # a fresh connection: it was processed
    (b"GET", True, False, True, True, False, False),      # response bytes came
    (b"POST", True, True, False, False, False, True),     # REFUSED_STREAM: never processed
    (b"POST", False, True, False, False, True, False),    # ... but its body was already sent
    (b"POST", False, True, False, False, False, True),    # ... body not begun: repeat the head
])
def test_retry_rule(method, end_stream, unprocessed, reused, got, body, retried):
    """A lost connection before the response: repeat on a fresh connection only what was provably
    not processed, or an idempotent request without a body on a reused connection (RFC 9110
    §9.2.2); never after response bytes or once body bytes went out."""
    m = awaiting(method, end_stream)
    if body:
        m.handle(S.REQ_DATA, b"xy", 2)
    commands = m.handle(S.LOST, unprocessed, reused, got)
    if retried:
        assert m.state is S.ROUTING and commands == [(S.ACQUIRE, True)]
    else:
        assert m.state is S.DONE and m.status == 502


def test_tunnel_handshake_lost_on_a_reused_connection_is_retried():
    """An RFC 8441 request is a bodiless GET handshake to an HTTP/1.1 backend, and the bytes its
    client sent before the switch are held, never written: a reused connection lost before any
    response byte (a keep-alive race) repeats it on a fresh one, held bytes and all, as the
    HTTP/1.1 WebSocket GET is; a fresh connection lost, or response bytes seen, is a 502."""
    m = tunnel()
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    m.handle(S.REQ_DATA, b"hello", 5)
    assert m.handle(S.LOST, False, True, False) == [(S.ACQUIRE, True)]
    assert m.state is S.ROUTING
    assert m.handle(S.READY, b"1.1", b"b:1") == [(S.SEND_HEAD,)]
    commands = m.handle(*switch_args(m))
    assert (S.SEND_BODY, b"hello") in commands and m.state is S.TUNNEL
    for unprocessed, reused, got in ((False, False, False), (False, True, True)):
        m = tunnel()
        m.handle(S.START)
        m.handle(S.READY, b"1.1", b"b:1")
        m.handle(S.LOST, unprocessed, reused, got)
        assert m.state is S.DONE and m.status == 502


def test_one_retry_at_most():
    """The second loss of the same request is a 502."""
    m = awaiting()
    m.handle(S.LOST, False, True, False)
    m.handle(S.READY, b"1.1", b"b:1")
    m.handle(S.LOST, False, True, False)
    assert m.state is S.DONE and m.status == 502


def test_another_backend_after_a_refused_connect():
    """UNREACHABLE with another backend left asks the pool again; without one it is a 502."""
    m = make(b"GET", True)
    m.handle(S.START)
    assert m.handle(S.UNREACHABLE, True) == [(S.ACQUIRE, False)] and m.state is S.ROUTING
    m.handle(S.UNREACHABLE, False)
    assert m.state is S.DONE and m.status == 502


# -- the request body ---------------------------------------------------------------------------

def test_body_is_acknowledged_only_once_the_backend_took_it():
    """DESIGN §5: bytes forwarded while the backend pushes back are acknowledged when it drains;
    bytes buffered before a connection came are acknowledged once written and taken."""
    m = make()
    m.handle(S.START)
    assert m.handle(S.REQ_DATA, b"early", 9) == []
    assert m.handle(S.READY, b"1.1", b"b:1") == [(S.SEND_HEAD,), (S.SEND_BODY, b"early")]
    assert m.handle(S.WRITTEN, True) == []
    assert m.handle(S.REQ_DATA, b"more", 4) == [(S.SEND_BODY, b"more")]
    assert m.handle(S.WRITTEN, False) == [(S.ACK, 13)]


def test_client_without_flow_control_is_paused_and_resumed():
    """HTTP/1.1: over the early limit, or while the backend pushes back, the client is paused;
    it resumes once the backend drains."""
    m = make(flow_controlled=False, early_limit=4)
    m.handle(S.START)
    assert m.handle(S.REQ_DATA, b"12345", 0) == [(S.PAUSE_CLIENT,)]
    m.handle(S.READY, b"1.1", b"b:1")
    assert m.handle(S.WRITTEN, False) == [(S.RESUME_CLIENT,)]
    m.handle(S.REQ_DATA, b"6", 0)
    assert m.handle(S.WRITTEN, True) == [(S.PAUSE_CLIENT,)]
    assert m.handle(S.WRITTEN, False) == [(S.RESUME_CLIENT,)]


@pytest.mark.parametrize("chunks, end", [([b"1234"], False), ([b"12"], True)],
                         ids=["longer", "shorter"])
@pytest.mark.parametrize("family, answer", [("h2", (S.RESET, PROTOCOL_ERROR)), ("http/1", None)])
def test_body_against_content_length(chunks, end, family, answer):
    """A body longer than Content-Length (at the byte that overflows) or shorter (at its end)
    fails the stream with length_mismatch and drops the backend connection: on HTTP/2 and SPDY
    a malformed request is reset with PROTOCOL_ERROR (RFC 9113 §8.1.1), HTTP/1.1 answers 400."""
    m = make(b"POST", False, [(b"content-length", b"3")])
    m.family = family  # the rule set of the frontend the request came from
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    commands = []
    for chunk in chunks:
        commands += m.handle(S.REQ_DATA, chunk, len(chunk))
    if end:
        commands += m.handle(S.REQ_END, ())
    assert m.state is S.DONE and m.status == 400 and m.reason == "length_mismatch"
    assert (S.DISCARD_BACKEND,) in commands
    if answer:
        assert answer in commands and S.RESPOND not in [c[0] for c in commands]
    else:
        assert (S.RESPOND, 400) == commands[[c[0] for c in commands].index(S.RESPOND)][:2]


def test_body_over_the_limit_is_413():
    """limits.max_request_body: the byte past the limit answers 413 (ENHANCE_YOUR_CALM if the
    response already started)."""
    m = awaiting(b"POST", False)
    m.max_body = 4
    m.handle(S.REQ_DATA, b"12345", 5)
    assert m.state is S.DONE and m.status == 413


def test_request_trailers_are_checked():
    """Trailers with a CR LF value fail the stream (bad_trailer); good ones go to END_BODY with
    framing fields dropped."""
    m = awaiting(b"POST", False)
    assert m.handle(S.REQ_END, [(b"x-sum", b"1"), (b"content-length", b"9")]) == [
        (S.END_BODY, [(b"x-sum", b"1")])]
    m = awaiting(b"POST", False)
    commands = m.handle(S.REQ_END, [(b"x-sum", b"a\r\nb")])
    assert m.state is S.DONE and m.reason == "bad_trailer"
    assert (S.RESET, PROTOCOL_ERROR) in commands


def test_expect_100_continue_is_answered_at_start():
    """A client waiting for 100 Continue gets it once the request is accepted (not when refused),
    and the backend's own 100 is not repeated."""
    m = make(headers=[(b"expect", b"100-continue")])
    assert (S.INFORM, 100, []) in m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    assert m.handle(S.INFO, 100, []) == []
    refused = make(headers=[(b"expect", b"100-continue")])
    assert S.INFORM not in [c[0] for c in refused.handle(S.FAIL, "rate_limited")]


def test_informational_responses_forwarded_are_bounded():
    """Every buffer bounded: 1xx heads are not flow-controlled on HTTP/2 or SPDY and take no
    window, so a backend repeating them could fill a client connection that reads nothing. The
    first ``MAX_INFORMATIONAL`` of a stream are forwarded; later ones are dropped, logged once,
    and the final response still goes out."""
    m = make(end_stream=True)
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    commands = []
    for _ in range(sm.MAX_INFORMATIONAL + 5):
        commands += m.handle(S.INFO, 103, [(b"link", b"</a>")])
    assert [c[0] for c in commands].count(S.INFORM) == sm.MAX_INFORMATIONAL
    assert [c[0] for c in commands].count(S.LOG) == 1
    assert S.RESPOND in [c[0] for c in m.handle(S.HEAD, 200, [(b"content-length", b"0")])]


# -- the response -------------------------------------------------------------------------------

def test_response_longer_or_shorter_than_its_length_is_reset():
    """A backend body past its Content-Length, or ending short of it, resets the client's stream
    (it cannot be framed correctly any more) and drops the connection."""
    m = awaiting()
    m.handle(S.HEAD, 200, [(b"content-length", b"3")])
    assert m.handle(S.DATA, b"1234")[-1] == (S.FINISH,) and m.state is S.DONE
    m = awaiting()
    m.handle(S.HEAD, 200, [(b"content-length", b"3")])
    m.handle(S.DATA, b"12")
    commands = m.handle(S.END)
    assert (S.DISCARD_BACKEND,) in commands and m.state is S.DONE


def test_head_and_204_ignore_the_length():
    """The Content-Length of a HEAD response or a 204 announces no body here."""
    m = awaiting(b"HEAD")
    m.handle(S.HEAD, 200, [(b"content-length", b"100")])
    assert (S.END_RESPONSE, ()) in m.handle(S.END)


def test_bad_response_head_is_a_502():
    """A response head the gate refuses (CR LF in a value) is answered 502, connection dropped."""
    m = awaiting()
    commands = m.handle(S.HEAD, 200, [(b"x", b"a\r\nb")])
    assert m.status == 502 and (S.DISCARD_BACKEND,) in commands


def test_length_and_chunked_response_forwards_no_length():
    """Issue item 5: the HTTP/1.1 codec consumes Transfer-Encoding with the Content-Length it
    overrides (chunked wins), so a head still carrying them came from an HTTP/2 backend, where
    they are malformed (RFC 9113 §8.2.2): 502, never a reason to drop the length."""
    m = awaiting()
    commands = m.handle(S.HEAD, 200, [(b"content-length", b"3"),
                                      (b"transfer-encoding", b"chunked")])
    assert m.status == 502 and (S.DISCARD_BACKEND,) in commands


def test_window_limits_what_is_sent_and_the_stall_timer_runs():
    """Response bytes beyond the window are held, the backend paused and the stall timer armed;
    the window opening sends them and resumes the backend."""
    window = Window(3)
    m = make(b"GET", True, window=window)
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    m.handle(S.HEAD, 200, [])
    assert m.handle(S.DATA, b"hello") == [(S.SEND, b"hel"), (S.PAUSE_BACKEND,), (S.CANCEL, S.READ),
                                          (S.ARM, S.STALL)]
    window.size = 1
    assert m.handle(S.WINDOW) == [(S.SEND, b"l"), (S.ARM, S.STALL)]
    window.size = 10
    assert m.handle(S.WINDOW) == [(S.SEND, b"o"), (S.CANCEL, S.STALL), (S.RESUME_BACKEND,),
                                  (S.ARM, S.READ)]
    assert m.sent == 5


def test_error_answer_waits_for_the_window():
    """An error answer goes through the window like any body (a client with a shut window still
    gets it, later); the stall timer bounds the wait."""
    window = Window(0)
    m = make(b"GET", True, window=window)
    commands = m.handle(S.FAIL, "rate_limited", "", [(b"retry-after", b"1")])
    assert commands[-1] == (S.ARM, S.STALL) and m.state is S.FLUSHING
    [respond] = [c for c in commands if c[0] is S.RESPOND]
    assert (b"retry-after", b"1") in respond[2] and m.status == 429
    window.size = 100
    assert [c[0] for c in m.handle(S.WINDOW)] == [S.SEND, S.CANCEL, S.END_RESPONSE, S.FINISH]


def test_head_request_error_has_no_body():
    """A failed HEAD gets the error head with END_STREAM and no body."""
    m = make(b"HEAD", True)
    assert [c[0] for c in m.handle(S.FAIL, "backend_busy")] == [
        S.LOG, S.CANCEL, S.RESPOND, S.FINISH]


def test_complete_response_before_the_request_ended_resets_with_no_error():
    """RFC 9113 §8.1: after a complete response to an unfinished request the client is asked to
    stop sending (RST_STREAM NO_ERROR); a finished request gets no reset."""
    m = awaiting(b"POST", False)
    m.handle(S.HEAD, 200, [])
    assert (S.RESET, NO_ERROR) in m.handle(S.END)
    m = awaiting(b"GET", True)
    m.handle(S.HEAD, 200, [])
    assert S.RESET not in [c[0] for c in m.handle(S.END)]


# -- tunnels (WebSocket; RFC 6455, RFC 8441) ----------------------------------------------------

def h1_websocket():
    """A machine for an HTTP/1.1 WebSocket upgrade, attached to a backend."""
    head = [(b":method", b"GET"), (b":path", b"/ws"), (b"host", b"example.com"),
            (b"upgrade", b"websocket"), (b"connection", b"Upgrade"),
            (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ=="),
            (b"sec-websocket-version", b"13")]
    request = gated(ev.RequestReceived(stream_id=1, headers=head, end_stream=True,
                                       http_version=b"1.1"))
    m = sm.StreamMachine(request, family="http/1", flow_controlled=False,
                         policy=Translator(POLICY, b"example.com"), window=Window())
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    return m


def test_h1_client_gets_101_with_the_backends_accept():
    """RFC 6455 §4.2.2: the client's key went through, so the backend's accept goes back as is,
    with Upgrade: websocket (the codec adds Connection: upgrade)."""
    m = h1_websocket()
    breq = backend_request(m.request, client_ip=b"127.0.0.1", policy=POLICY)
    assert breq.key == b"dGhlIHNhbXBsZSBub25jZQ==" and not breq.own_key
    accept = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="  # RFC 6455 §1.3's example
    commands = m.handle(S.UPGRADED, 101, [(b"upgrade", b"websocket"),
                                          (b"connection", b"upgrade"),
                                          (b"sec-websocket-accept", accept)], breq)
    assert m.state is S.TUNNEL
    respond = [c for c in commands if c[0] is S.RESPOND][0]
    assert respond[1] == 101 and (b"sec-websocket-accept", accept) in respond[2]
    assert (b"upgrade", b"websocket") in respond[2] and respond[3] is False
    assert (S.OPEN_TUNNEL,) in commands


def test_h2_client_gets_200_without_accept():
    """RFC 8441 §5: the 101 becomes :status 200 and Sec-WebSocket-Accept stays behind."""
    m = tunnel()
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    commands = m.handle(*switch_args(m))
    respond = [c for c in commands if c[0] is S.RESPOND][0]
    assert respond[1] == 200
    assert not any(name in (b"sec-websocket-accept", b"upgrade", b"connection")
                   for name, _ in respond[2])


def test_wrong_accept_is_a_502():
    """proxyd made the key for an RFC 8441 client: a 101 with another accept is refused."""
    m = tunnel()
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    event, status, headers, breq = switch_args(m)
    headers = [h for h in headers if h[0] != b"sec-websocket-accept"]
    headers.append((b"sec-websocket-accept", accept_for(b"another key=")))
    commands = m.handle(event, status, headers, breq)
    assert m.state is S.DONE and m.status == 502 and m.reason == "bad_upgrade"
    assert (S.DISCARD_BACKEND,) in commands


def test_2xx_without_a_switch_never_opens_an_h2_tunnel():
    """RFC 8441 §5: a 2xx would open the client's tunnel, so a backend's 200 (no 101) to the
    handshake is a 502; a 403 is an ordinary answer."""
    m = tunnel()
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    m.handle(S.HEAD, 200, [(b"content-length", b"0")])
    assert m.state is S.DONE and m.status == 502
    m = tunnel()
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    m.handle(S.HEAD, 403, [(b"content-length", b"0")])
    assert m.state is S.RESPONDING and m.status == 403


def test_tunnel_bytes_are_acknowledged_once_the_backend_took_them():
    """DESIGN §5 holds inside the tunnel too: DATA is acknowledged only after the write."""
    m = tunnel()
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    m.handle(*switch_args(m))
    assert m.handle(S.REQ_DATA, b"hello", 5) == [(S.SEND_BODY, b"hello"), (S.ARM, S.IDLE_TIMER)]
    assert m.handle(S.WRITTEN, True) == []
    assert m.handle(S.WRITTEN, False) == [(S.ACK, 5)]


def test_bytes_held_for_a_tunnel_are_not_acknowledged_by_a_drained_backend():
    """DESIGN §5: DATA an RFC 8441 client sends before the switch waits in the machine, so a
    WRITTEN(False) before the tunnel opens (the backend's transport drained for other bytes: a
    bridge connection shared by many streams, or the handshake's own head) took none of it and
    acknowledges nothing; a 403 answer does not either. Only the switch, which sends the held
    bytes, leads to their acknowledgement."""
    m = tunnel()
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    assert m.handle(S.REQ_DATA, b"hello", 5) == []
    assert m.handle(S.WRITTEN, False) == []
    commands = m.handle(*switch_args(m))
    assert (S.SEND_BODY, b"hello") in commands and (S.ACK, 5) not in commands
    assert m.handle(S.WRITTEN, False) == [(S.ACK, 5)]
    m = tunnel()
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    m.handle(S.HEAD, 403, [(b"content-length", b"4")])
    assert m.handle(S.REQ_DATA, b"hello", 5) == []
    assert m.handle(S.WRITTEN, False) == []


def test_backend_failure_in_a_tunnel_is_connect_error():
    """RFC 9113 §8.5: a failed TCP connection under a CONNECT stream is RST CONNECT_ERROR."""
    m = tunnel()
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    m.handle(*switch_args(m))
    commands = m.handle(S.LOST, False, False, True)
    assert (S.RESET, CONNECT_ERROR) in commands and m.state is S.DONE


def test_upgraded_for_a_request_that_asked_for_none_is_refused():
    """A switch to a plain request is a bad response (the writer refuses it earlier too)."""
    m = make(b"GET", True)
    m.handle(S.START)
    m.handle(S.READY, b"1.1", b"b:1")
    m.handle(S.UPGRADED, 101, [(b"upgrade", b"websocket")], None)
    assert m.state is S.DONE and m.status == 502 and m.reason == "bad_response"
