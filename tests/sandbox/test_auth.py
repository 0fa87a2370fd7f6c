"""TokenRequest, TokenReview, static tokens, required authentication, SubjectAccessReview, and
leader election on a Lease with the client's own LeaderElection."""

from __future__ import annotations

import base64
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from hsmd.sandbox import SandboxHandle, run_sandbox
from tests.sandbox.conftest import Cluster, raw, unique, wait_for


def _claims(token: str) -> dict:
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))


def _service_account(cluster: Cluster, ns: str, name: str = "robot") -> client.V1ServiceAccount:
    return cluster.core.create_namespaced_service_account(ns, client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name=name)))


def _token(cluster: Cluster, ns: str, sa: str, audiences: list[str] | None = None, seconds: int = 3600) -> str:
    req = cluster.core.create_namespaced_service_account_token(sa, ns, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=audiences or [], expiration_seconds=seconds)))
    return str(req.status.token)


def _review(cluster: Cluster, token: str, audiences: list[str] | None = None) -> client.V1TokenReviewStatus:
    review = client.AuthenticationV1Api(cluster.api).create_token_review(client.V1TokenReview(
        spec=client.V1TokenReviewSpec(token=token, audiences=audiences)))
    return review.status


def test_token_request_mints_an_audience_bound_jwt(cluster: Cluster, ns: str) -> None:
    sa = _service_account(cluster, ns)
    req = cluster.core.create_namespaced_service_account_token("robot", ns, client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=["hsmd-proxy"], expiration_seconds=600)))
    assert req.status.expiration_timestamp
    claims = _claims(req.status.token)
    assert claims["aud"] == ["hsmd-proxy"]
    assert claims["sub"] == f"system:serviceaccount:{ns}:robot"
    assert claims["kubernetes.io"]["namespace"] == ns
    assert claims["kubernetes.io"]["serviceaccount"] == {"name": "robot", "uid": sa.metadata.uid}
    assert 590 <= claims["exp"] - claims["iat"] <= 610


def test_token_request_rejects_short_expiry_and_unknown_account(cluster: Cluster, ns: str) -> None:
    _service_account(cluster, ns)
    with pytest.raises(ApiException) as err:
        _token(cluster, ns, "robot", seconds=60)
    assert err.value.status == 422
    with pytest.raises(ApiException) as err:
        _token(cluster, ns, "nobody")
    assert err.value.status == 404


def test_token_review_checks_audiences(cluster: Cluster, ns: str) -> None:
    sa = _service_account(cluster, ns)
    token = _token(cluster, ns, "robot", ["hsmd-proxy", "other"])
    ok = _review(cluster, token, ["hsmd-proxy"])
    assert ok.authenticated is True
    assert ok.audiences == ["hsmd-proxy"]
    assert ok.user.username == f"system:serviceaccount:{ns}:robot"
    assert ok.user.uid == sa.metadata.uid
    assert set(ok.user.groups) >= {"system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"}
    wrong = _review(cluster, token, ["somebody-else"])
    assert not wrong.authenticated and wrong.error


def test_token_review_rejects_tokens_of_deleted_accounts(cluster: Cluster, ns: str) -> None:
    _service_account(cluster, ns, "temp")
    token = _token(cluster, ns, "temp", ["hsmd-proxy"])
    assert _review(cluster, token, ["hsmd-proxy"]).authenticated
    cluster.core.delete_namespaced_service_account("temp", ns)
    wait_for(lambda: not _review(cluster, token, ["hsmd-proxy"]).authenticated, what="token invalidated")
    _service_account(cluster, ns, "temp")  # same name, new uid: the old token stays invalid
    assert not _review(cluster, token, ["hsmd-proxy"]).authenticated


def test_token_review_rejects_garbage(cluster: Cluster) -> None:
    status = _review(cluster, "not.a.token", ["hsmd-proxy"])
    assert status.authenticated is not True


def test_service_account_token_authenticates_api_requests(cluster: Cluster, ns: str) -> None:
    _service_account(cluster, ns)
    token = _token(cluster, ns, "robot")  # default audience: the API server itself
    review = client.AuthenticationV1Api(cluster.api).create_self_subject_review(client.V1SelfSubjectReview())
    assert review.status.user_info.username
    configuration = client.Configuration()
    configuration.host = cluster.api.configuration.host
    configuration.ssl_ca_cert = cluster.api.configuration.ssl_ca_cert
    configuration.api_key = {"BearerToken": f"Bearer {token}"}
    with client.ApiClient(configuration) as api:
        me = client.AuthenticationV1Api(api).create_self_subject_review(client.V1SelfSubjectReview())
        assert me.status.user_info.username == f"system:serviceaccount:{ns}:robot"


def test_subject_access_review_follows_rbac(cluster: Cluster, ns: str) -> None:
    rbac = client.RbacAuthorizationV1Api(cluster.api)
    rbac.create_namespaced_role(ns, client.V1Role(metadata=client.V1ObjectMeta(name="reader"), rules=[
        client.V1PolicyRule(api_groups=[""], resources=["secrets"], verbs=["get", "list"])]))
    rbac.create_namespaced_role_binding(ns, client.V1RoleBinding(
        metadata=client.V1ObjectMeta(name="reader"),
        role_ref=client.V1RoleRef(api_group="rbac.authorization.k8s.io", kind="Role", name="reader"),
        subjects=[client.RbacV1Subject(kind="ServiceAccount", name="robot", namespace=ns)]))
    authz = client.AuthorizationV1Api(cluster.api)
    user = f"system:serviceaccount:{ns}:robot"
    groups = ["system:serviceaccounts", f"system:serviceaccounts:{ns}", "system:authenticated"]

    def allowed(verb: str, resource: str) -> bool:
        sar = authz.create_subject_access_review(client.V1SubjectAccessReview(spec=client.V1SubjectAccessReviewSpec(
            user=user, groups=groups, resource_attributes=client.V1ResourceAttributes(
                namespace=ns, verb=verb, resource=resource))))
        return bool(sar.status.allowed)

    wait_for(lambda: allowed("get", "secrets"), what="RBAC grant visible")
    assert not allowed("delete", "secrets")
    assert not allowed("get", "configmaps")


@pytest.fixture
def tokens_file(tmp_path: Path) -> Path:
    path = tmp_path / "tokens.csv"
    path.write_text('reader-token,reader,u-1,"team-a,team-b"\nplain-token,plain,u-2\n')
    return path


@pytest.fixture
def locked_sandbox(tokens_file: Path) -> Iterator[SandboxHandle]:
    with run_sandbox(tokens_file=str(tokens_file), require_auth=True) as handle:
        yield handle


def _client(handle: SandboxHandle, token: str | None) -> client.ApiClient:
    configuration = client.Configuration()
    configuration.host = handle.url
    if token:
        configuration.api_key = {"BearerToken": f"Bearer {token}"}
    return client.ApiClient(configuration)


@pytest.mark.sandbox_only
def test_require_auth_and_static_tokens(locked_sandbox: SandboxHandle) -> None:
    with _client(locked_sandbox, None) as anon:
        status, _, body = raw(anon, "GET", "/api/v1/namespaces")
        assert status == 401 and json.loads(body)["reason"] == "Unauthorized"
    with _client(locked_sandbox, "wrong") as bad:
        assert raw(bad, "GET", "/api/v1/namespaces")[0] == 401
    with _client(locked_sandbox, "reader-token") as reader:
        assert raw(reader, "GET", "/api/v1/namespaces")[0] == 200
        me = client.AuthenticationV1Api(reader).create_self_subject_review(client.V1SelfSubjectReview())
        assert me.status.user_info.username == "reader" and me.status.user_info.uid == "u-1"
        assert set(me.status.user_info.groups) == {"team-a", "team-b", "system:authenticated"}
    with _client(locked_sandbox, locked_sandbox.admin_token) as admin:
        review = client.AuthenticationV1Api(admin).create_token_review(client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token="plain-token")))
        assert review.status.authenticated and review.status.user.username == "plain"
        # static tokens are not audience-bound: only valid for the API server's own audiences
        review = client.AuthenticationV1Api(admin).create_token_review(client.V1TokenReview(
            spec=client.V1TokenReviewSpec(token="plain-token", audiences=["hsmd-proxy"])))
        assert not review.status.authenticated


@pytest.mark.sandbox_only
def test_expired_token_is_rejected(sandbox: SandboxHandle) -> None:
    """Expiry can't be waited for (10-minute minimum), so mint with the sandbox's signer directly."""
    api = sandbox.api_client()
    core = client.CoreV1Api(api)
    name = unique("exp")
    sa = core.create_namespaced_service_account("default", client.V1ServiceAccount(
        metadata=client.V1ObjectMeta(name=name)))
    sa_obj = sandbox.cluster.get_obj(sandbox.cluster.rt("", "serviceaccounts"), "default", name)
    assert sa_obj["metadata"]["uid"] == sa.metadata.uid
    token, _ = sandbox.cluster.auth.mint(sa_obj, ["hsmd-proxy"], -5)
    review = client.AuthenticationV1Api(api).create_token_review(client.V1TokenReview(
        spec=client.V1TokenReviewSpec(token=token, audiences=["hsmd-proxy"])))
    assert not review.status.authenticated and "expired" in review.status.error
    api.close()


def test_leader_election_on_a_lease(cluster: Cluster, ns: str) -> None:
    from kubernetes.leaderelection import electionconfig, leaderelection
    from kubernetes.leaderelection.resourcelock.leaselock import LeaseLock

    name = unique("lock")
    became_leader = threading.Event()

    def lead() -> None:
        became_leader.set()

    # LeaseLock uses the default client configuration
    previous = client.Configuration.get_default_copy()
    client.Configuration.set_default(cluster.api.configuration)
    try:
        lock = LeaseLock(name, ns, "candidate-1")
        config = electionconfig.Config(lock, lease_duration=3, renew_deadline=2, retry_period=1,
                                       onstarted_leading=lead, onstopped_leading=lambda: None)
        election = leaderelection.LeaderElection(config)
        t = threading.Thread(target=election.run, daemon=True)
        t.start()
        assert became_leader.wait(15)
        lease = client.CoordinationV1Api(cluster.api).read_namespaced_lease(name, ns)
        assert lease.spec.holder_identity == "candidate-1"
        assert lease.spec.lease_duration_seconds == 3
        renewed = wait_for(lambda: (lambda spec: spec.renew_time != lease.spec.renew_time and spec)(
            client.CoordinationV1Api(cluster.api).read_namespaced_lease(name, ns).spec), timeout=10,
            what="lease renewed")
        assert renewed.holder_identity == "candidate-1"
    finally:
        client.Configuration.set_default(previous)
        # make renewals fail so the election loop gives up leadership and its thread ends
        lock.update = lambda *args: False  # type: ignore[method-assign]
        lock.create = lambda *args: False  # type: ignore[method-assign]
        t.join(timeout=10)
