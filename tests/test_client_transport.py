"""The Python client against the service's FastAPI app through the client's ``transport=``,
without Ray: every method, answers checked against counts made independently from the raw
labels, and each kind of failure mapped to its exception."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from test_service_api import TOKEN, served  # noqa: F401 (the fixture)
from volume.client import (BadRequest, NotFound, ServiceTimeout, ServiceUnavailable, TooLarge, Unauthorized,
                           VolumeClient)


def bridge(tc: TestClient) -> httpx.MockTransport:
    """An httpx transport that hands each request to the ASGI app (through FastAPI's TestClient)."""

    def handle(request: httpx.Request) -> httpx.Response:
        r = tc.request(request.method, request.url.raw_path.decode(), content=request.content,
                       headers=dict(request.headers))
        return httpx.Response(r.status_code, headers=r.headers, content=r.content)

    return httpx.MockTransport(handle)


@pytest.fixture
def client(served, boolean_spec):
    """The service app of test_service_api's ``served`` (table 'tiny', its draws counted with a
    Counter, a 64-function batch limit), behind a client."""
    tc, _, counts = served
    with VolumeClient("http://volume.test", token=TOKEN, transport=bridge(tc)) as c:
        yield c, counts, boolean_spec


def test_every_method_through_the_transport(client):
    c, counts, spec = client
    n = sum(counts.values())
    assert c.health()["status"] == "ok"
    assert [(t["name"], t["n_samples"]) for t in c.tables()] == [("tiny", n)]
    assert c.table("tiny")["n_distinct"] == len(counts)
    f, g = sorted(counts)[0], "11111111" if "11111111" not in counts else "00000000"
    est = c.prior("tiny", [f, g])
    assert (est[0].count, est[0].p) == (counts[f], counts[f] / n) and est[1].count == counts.get(g, 0)
    assert [e.count for e in c.top("tiny", 3)] == sorted(counts.values(), reverse=True)[:3]
    # the posterior of the majority target on S = inputs 0..3, counted by hand from the labels
    majority = "00010111"
    consistent = {h: k for h, k in counts.items() if h[:4] == majority[:4]}
    post = c.posterior("tiny", "0-3", target="majority")
    assert post.n_consistent == sum(consistent.values()) and post.p_u == sum(consistent.values()) / n
    err = sum(k * sum(a != b for a, b in zip(h[4:], majority[4:])) / 4 for h, k in consistent.items())
    assert post.expected_error == pytest.approx(err / sum(consistent.values()))
    job = c.wait(c.submit("tiny", draws=3 * spec.block_size), timeout=60, poll=0.05)
    assert job.state == "done" and c.table("tiny")["n_samples"] == 3 * spec.block_size
    assert [j.id for j in c.jobs()] == [job.id]


def test_failures_map_to_exceptions(client):
    c, _, _ = client
    with pytest.raises(NotFound, match="nope"):
        c.table("nope")
    with pytest.raises(BadRequest, match="length"):
        c.prior("tiny", ["0101"])
    with pytest.raises(TooLarge):
        c.prior("tiny", ["01010101"] * 65)
    anonymous = VolumeClient("http://volume.test", token=None, transport=c._http._transport)
    with pytest.raises(Unauthorized, match="Bearer"):
        anonymous.submit("tiny", draws=10)


@pytest.mark.parametrize("error, expected", [(httpx.ReadTimeout("slow"), ServiceTimeout),
                                             (httpx.ConnectError("refused"), ServiceUnavailable)])
def test_transport_errors(error, expected, monkeypatch):
    monkeypatch.delenv("VOLUME_TOKEN", raising=False)

    def fail(request):
        raise error

    with VolumeClient("http://volume.test", transport=httpx.MockTransport(fail)) as c:
        with pytest.raises(expected, match="volume.test/health"):
            c.health()
