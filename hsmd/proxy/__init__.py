"""hsmd proxy: the REST secrets broker.

``create_app(ProxyConfig)`` builds the Flask app (hsmd.proxy.app); hsmd.proxy.server runs it under
waitress (with an optional TLS front); hsmd.proxy.cli is ``hsmd proxy``. Identity is a Kubernetes
ServiceAccount token checked by TokenReview (hsmd.proxy.auth), authorization is hsmd.policy
(hsmd.proxy.policy_source keeps it current), every request lands in the audit log
(hsmd.proxy.audit), and secret operations fan out to the pool's agents through hsmd.fanout.
"""

from __future__ import annotations

from hsmd.proxy.app import ProxyConfig, create_app

__all__ = ["ProxyConfig", "create_app"]
