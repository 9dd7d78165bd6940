"""The facade lifecycle through the client that openapi-python-client generated from openapi.json:
list, create, get, power off, delete. Exits non-zero (with the reason) on anything unexpected."""
import sys
import time

import httpx
from orion_proxy_client import AuthenticatedClient
from orion_proxy_client.api.facade import (
    facade_instances_create,
    facade_instances_delete,
    facade_instances_get,
    facade_instances_list,
    facade_instances_poweroff,
)
from orion_proxy_client.models import Error, FacadeInstanceCreate, Instance

base, key = sys.argv[1], sys.argv[2]
client = AuthenticatedClient(
    base_url=base, token=key, raise_on_unexpected_status=True, timeout=httpx.Timeout(60.0)
)


def ok(what, r, status):
    if r.status_code != status or isinstance(r.parsed, Error) or r.parsed is None:
        sys.exit(f"{what}: {r.status_code} {r.content[:500]!r}")
    print(f"{what}: {r.status_code}")
    return r.parsed


def wait_state(iid, want, deadline=120.0):
    end = time.monotonic() + deadline
    while True:
        inst = ok("get", facade_instances_get.sync_detailed(iid, client=client), 200)
        if str(inst.state.value if hasattr(inst.state, "value") else inst.state) == want:
            return inst
        if time.monotonic() > end:
            sys.exit(f"{iid} not {want} in time: {inst.state}")
        time.sleep(0.3)


listed = ok("list", facade_instances_list.sync_detailed(client=client, limit=5), 200)
items = listed if isinstance(listed, list) else getattr(listed, "items", listed)
print("listed", len(items))
created = ok(
    "create",
    facade_instances_create.sync_detailed(
        client=client,
        body=FacadeInstanceCreate(
            name="generated-client-1", memory=1024, region="SY3", template="ubuntu-22-04", start=True
        ),
    ),
    201,
)
assert isinstance(created, Instance), created
iid = str(created.id)
got = wait_state(iid, "running")
assert got.name == "generated-client-1", got.name
off = ok("poweroff", facade_instances_poweroff.sync_detailed(iid, client=client), 202)
assert isinstance(off, Instance)
wait_state(iid, "stopped")
gone = ok("delete", facade_instances_delete.sync_detailed(iid, client=client), 202)
assert isinstance(gone, Instance)
print("lifecycle ok", iid)
