"""Authorization as the handlers see it: may this request's principal do that?

`--authorizer acl` makes every agent check Kafka ACLs (security/acl.py holds the
rules; the bindings come from the coordinator store and reload when they change).
Without it every request is allowed, as on a Kafka broker with no authorizer.

Requests that are all or nothing (a group's JoinGroup, a transactional id's EndTxn,
the cluster's CreateAcls) are checked once in the dispatch path: `GATES` says what
each needs, and a denied request gets its API's error response without reaching
its handler. Requests that carry many topics check each topic where the handler
walks them (`ctx.access.allows`), and answer TOPIC_AUTHORIZATION_FAILED for those
alone, as Kafka does.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.security.acl import CLUSTER_NAME, AclOperation, Authorizer, ResourceType
from driftlog.security.principal import ANONYMOUS

TOPIC = ResourceType.TOPIC
GROUP = ResourceType.GROUP
CLUSTER = ResourceType.CLUSTER
TRANSACTIONAL_ID = ResourceType.TRANSACTIONAL_ID


@dataclass(frozen=True, slots=True)
class Access:
    """The authorizer (None: allow everything) bound to one connection's identity."""

    authorizer: Authorizer | None
    principal: str
    host: str

    @property
    def enforced(self) -> bool:
        return self.authorizer is not None

    def allows(self, operation: AclOperation, resource_type: ResourceType, name: str) -> bool:
        if self.authorizer is None:
            return True
        return self.authorizer.authorize(self.principal, self.host, operation, resource_type, name)

    def allows_any(self, operation: AclOperation, resource_type: ResourceType) -> bool:
        """Kafka's authorizeByResourceType: could some resource of the type allow it?"""
        if self.authorizer is None:
            return True
        return self.authorizer.authorize_any(self.principal, self.host, operation, resource_type)

    def allows_cluster(self, operation: AclOperation) -> bool:
        return self.allows(operation, CLUSTER, CLUSTER_NAME)

    def may_write_idempotently(self) -> bool:
        """IDEMPOTENT_WRITE on the cluster, implied by WRITE on any topic (KIP-679)."""
        return self.allows_cluster(AclOperation.IDEMPOTENT_WRITE) or self.allows_any(
            AclOperation.WRITE, TOPIC
        )


# No authorizer: every request allowed.
UNCHECKED = Access(None, ANONYMOUS, "")

# What a whole request needs: (operation, resource type, name, the error if denied).
Need = tuple[AclOperation, ResourceType, str, ErrorCode]
_GROUP_DENIED = ErrorCode.group_authorization_failed
_TXN_DENIED = ErrorCode.transactional_id_authorization_failed
_CLUSTER_DENIED = ErrorCode.cluster_authorization_failed


def _group_read(request: Any) -> list[Need]:
    return [(AclOperation.READ, GROUP, request.group_id, _GROUP_DENIED)]


def _txn_write(request: Any) -> list[Need]:
    return [(AclOperation.WRITE, TRANSACTIONAL_ID, request.transactional_id, _TXN_DENIED)]


def _txn_offsets(request: Any) -> list[Need]:
    return [*_txn_write(request), *_group_read(request)]


def _cluster(operation: AclOperation) -> Callable[[Any], list[Need]]:
    return lambda _request: [(operation, CLUSTER, CLUSTER_NAME, _CLUSTER_DENIED)]


GATES: dict[int, Callable[[Any], list[Need]]] = {
    11: _group_read,  # JoinGroup
    12: _group_read,  # Heartbeat
    13: _group_read,  # LeaveGroup
    14: _group_read,  # SyncGroup
    25: _txn_offsets,  # AddOffsetsToTxn
    26: _txn_write,  # EndTxn
    48: _cluster(AclOperation.DESCRIBE_CONFIGS),  # DescribeClientQuotas
}


def denial(access: Access, api_key: int, request: Any) -> ErrorCode | None:
    """The error that refuses this whole request, or None to let its handler run."""
    gate = GATES.get(api_key)
    if gate is None or access.authorizer is None:
        return None
    for operation, resource_type, name, error in gate(request):
        if not access.allows(operation, resource_type, name):
            return error
    return None
