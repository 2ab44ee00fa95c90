"""A client generated from Herald's /openapi.json (openapi-python-client, package `herald_client`)
creates a connection, enqueues a share, lists and reads shares. Run by tests/contract/run.sh
with HERALD_BASE (the API's URL) and HERALD_KEY (a tenant key)."""

import os
import sys
import uuid

from herald_client import AuthenticatedClient
from herald_client.api.connections import create as create_connection
from herald_client.api.connections import get as get_connection
from herald_client.api.connections import list_ as list_connections
from herald_client.api.shares import create as create_share
from herald_client.api.shares import get as get_share
from herald_client.api.shares import list_ as list_shares
from herald_client.models import (
    ConnectionList,
    ConnectionView,
    CreateConnectionRequest,
    CreateConnectionRequestExtras,
    CreateShareRequest,
    ErrorBody,
    PlatformKind,
    ShareList,
    ShareState,
    ShareView,
)


def expect(kind, value, what):
    if not isinstance(value, kind):
        sys.exit(f"generated client: {what} answered {value!r}, expected {kind.__name__}")
    return value


def main() -> None:
    client = AuthenticatedClient(
        base_url=os.environ["HERALD_BASE"],
        token=os.environ["HERALD_KEY"],
        raise_on_unexpected_status=True,
    )
    run = uuid.uuid4().hex[:8]
    extras = CreateConnectionRequestExtras.from_dict({"instance_url": "https://client.example"})
    conn = expect(
        ConnectionView,
        create_connection.sync(
            client=client,
            body=CreateConnectionRequest(
                platform=PlatformKind.MASTODON,
                platform_account_id=f"client-{run}",
                handle=f"client-{run}@client.example",
                access_token="a-token",
                scopes=["write:statuses"],
                extras=extras,
            ),
        ),
        "POST /v1/connections",
    )
    assert conn.platform == "mastodon" and conn.has_refresh_token is False, conn
    again = expect(ConnectionView, get_connection.sync(client=client, id=conn.id), "GET /v1/connections/{id}")
    assert again.id == conn.id
    listed = expect(ConnectionList, list_connections.sync(client=client, limit=200), "GET /v1/connections")
    assert conn.id in [c.id for c in listed.connections], listed

    url = f"https://blog.example/client/{run}"
    created = expect(
        ShareList,
        create_share.sync(
            client=client,
            body=CreateShareRequest(url=url, connection_ids=[conn.id], title="From a generated client", text="Hello"),
            idempotency_key=f"client-{run}",
        ),
        "POST /v1/shares",
    )
    assert len(created.shares) == 1, created
    share = created.shares[0]
    assert share.connection_id == conn.id and share.url == url, share
    assert isinstance(share.state, ShareState), share.state

    # The same Idempotency-Key gives the same share.
    repeated = expect(
        ShareList,
        create_share.sync(
            client=client,
            body=CreateShareRequest(url=url, connection_ids=[conn.id], title="From a generated client", text="Hello"),
            idempotency_key=f"client-{run}",
        ),
        "POST /v1/shares (repeated)",
    )
    assert repeated.shares[0].id == share.id

    by_url = expect(ShareList, list_shares.sync(client=client, url_query=url, limit=10), "GET /v1/shares?url=")
    assert [s.id for s in by_url.shares] == [share.id], by_url
    page = expect(ShareList, list_shares.sync(client=client, limit=1), "GET /v1/shares?limit=1")
    assert len(page.shares) == 1

    read = expect(ShareView, get_share.sync(client=client, id=share.id), "GET /v1/shares/{id}")
    assert read.id == share.id and read.url == url, read
    assert read.attempt_history is not None

    # A refusal reads as the documented error body.
    refused = create_share.sync(client=client, body=CreateShareRequest(url=url, connection_ids=["con_missing"]))
    refused = expect(ErrorBody, refused, "POST /v1/shares (unknown connection)")
    assert refused.error.code == "unknown_connection" and refused.error.field == "connection_ids[0]", refused
    print(f"generated client: connection {conn.id}, share {share.id} ({read.state}), listed and read")


if __name__ == "__main__":
    main()
