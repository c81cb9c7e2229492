"""The outage tests' TCP proxy really cuts and restores a connection (against the real Redis)."""

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.helpers.tcp_proxy import TcpProxy


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, retry=Retry(NoBackoff(), 0))


def test_proxy_passes_cuts_and_restores() -> None:
    with TcpProxy("127.0.0.1", 6379) as proxy:
        client = _client(proxy.port)
        assert client.ping()
        proxy.cut()
        with pytest.raises(redis.exceptions.ConnectionError):
            client.ping()
        with pytest.raises(redis.exceptions.ConnectionError):
            _client(proxy.port).ping()
        proxy.restore()
        assert _client(proxy.port).ping()
        assert proxy.connections >= 2
