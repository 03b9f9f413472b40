"""A Python service using generated stubs against a running registry-svc.

Usage: registry_client.py ADDRESS TOKEN STUB_DIR. Exits non-zero on the first
unexpected result; prints one line per check.
"""
import hashlib
import os
import sys
import threading

ADDRESS, TOKEN, STUBS = sys.argv[1], sys.argv[2], sys.argv[3]
sys.path.insert(0, STUBS)

import grpc  # noqa: E402
from grpc_status import rpc_status  # noqa: E402
from google.rpc import error_details_pb2  # noqa: E402
from capstan.registry.v1 import registry_pb2 as pb  # noqa: E402
from capstan.registry.v1 import registry_pb2_grpc as rpc  # noqa: E402

META = [("authorization", f"Bearer {TOKEN}")]
channel = grpc.insecure_channel(ADDRESS, options=[("grpc.max_receive_message_length", 16 << 20)])
stub = rpc.RegistryServiceStub(channel)


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


def servable(name, wape, content):
    run = stub.CreateRun(pb.CreateRunRequest(name=name, model_type="moving_average",
                                             status=pb.RUN_STATUS_RUNNING, metrics={"wape": wape}), metadata=META)
    sha = hashlib.sha256(content).hexdigest()

    def messages():
        yield pb.UploadArtifactRequest(header=pb.ArtifactHeader(
            run_id=run.run_id, name="model.pkl", expected_sha256=sha, expected_size=len(content)))
        for i in range(0, len(content), 1 << 20):
            yield pb.UploadArtifactRequest(chunk=content[i:i + (1 << 20)])

    up = stub.UploadArtifact(messages(), metadata=META)
    check(up.sha256 == sha and up.artifact_uri.endswith(f"moving_average-model_{sha}.pkl"), f"upload of {name} hashed and named")
    return stub.UpdateRun(pb.UpdateRunRequest(run=pb.Run(run_id=run.run_id, status=pb.RUN_STATUS_SUCCEEDED)), metadata=META)


champion = servable("champion", 0.2, os.urandom(5 << 20))
challenger = servable("challenger", 0.4, os.urandom(1 << 20))
alias = stub.SetAlias(pb.SetAliasRequest(alias="py-prod", run_id=champion.run_id, expected_revision=0), metadata=META)
check(alias.revision == 1, "alias created at revision 1")

events = []
ready = threading.Event()


def watch():
    for ev in stub.WatchAliases(pb.WatchAliasesRequest(aliases=["py-prod"]), metadata=META, timeout=10):
        events.append(ev)
        ready.set()
        if len(events) == 2:
            return


t = threading.Thread(target=watch)
t.start()
ready.wait(10)

try:
    stub.PromoteRun(pb.PromoteRunRequest(alias="py-prod", run_id=challenger.run_id, metric="wape"), metadata=META)
    check(False, "worse challenger refused")
except grpc.RpcError as e:
    check(e.code() == grpc.StatusCode.FAILED_PRECONDITION and "0.4" in e.details() and "0.2" in e.details(),
          "worse challenger refused, naming both values")

forced = stub.PromoteRun(pb.PromoteRunRequest(alias="py-prod", run_id=challenger.run_id, metric="wape", force=True),
                         metadata=META)
check(forced.promoted and forced.alias.revision == 2, "forced promotion is revision 2")
t.join(10)
check([e.type for e in events] == [pb.ALIAS_EVENT_TYPE_SNAPSHOT, pb.ALIAS_EVENT_TYPE_CHANGED]
      and events[1].alias.run_id == challenger.run_id, "watch saw the snapshot, then the swap")

chunks = stub.DownloadArtifact(pb.DownloadArtifactRequest(run_id=champion.run_id), metadata=META)
first = next(chunks)
digest = hashlib.sha256()
for c in chunks:
    digest.update(c.chunk)
check(first.HasField("metadata") and digest.hexdigest() == first.metadata.sha256, "download streams the same bytes")

try:
    stub.CreateRun(pb.CreateRunRequest(name="", model_type="Bad Type"), metadata=META)
    check(False, "bad run refused")
except grpc.RpcError as e:
    status = rpc_status.from_call(e)
    bad = error_details_pb2.BadRequest()
    check(status is not None and status.details[0].Unpack(bad), "field violations arrive as google.rpc.BadRequest")
    check(sorted(v.field for v in bad.field_violations) == ["model_type", "name"], "both bad fields are named")
print("python client: all checks passed")
