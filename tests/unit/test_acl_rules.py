"""Kafka's ACL rules (security/acl.py), mostly as Kafka's own tests state them:
StandardAuthorizerTest, AuthorizerTest and BaseAuthorizerTest (core, metadata),
ResourcePatternFilterTest and AclControlManagerTest, plus a property test that
the indexed lookup answers as a scan of every binding does."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode

from driftlog.security.acl import (
    CLUSTER_NAME,
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    Authorizer,
    PatternType,
    ResourceType,
    authorized_operations,
    matches,
    parse_super_users,
    supported_operations,
    validate_binding,
    validate_filter,
)

Op = AclOperation
ALLOW = AclPermissionType.ALLOW
DENY = AclPermissionType.DENY
LITERAL = PatternType.LITERAL
PREFIXED = PatternType.PREFIXED
TOPIC = ResourceType.TOPIC
GROUP = ResourceType.GROUP
CLUSTER = ResourceType.CLUSTER
TXN = ResourceType.TRANSACTIONAL_ID
CONCRETE_OPS = [op for op in AclOperation if op not in (Op.UNKNOWN, Op.ANY)]
HOST = "192.168.0.1"


def acl(
    resource_type: ResourceType,
    name: str,
    pattern: PatternType,
    principal: str,
    host: str,
    operation: AclOperation,
    permission: AclPermissionType,
) -> AclBinding:
    return AclBinding(resource_type, name, pattern, principal, host, operation, permission)


Entry = tuple[str, str, AclOperation, AclPermissionType]
Resource = tuple[ResourceType, str, PatternType]


def entry(
    principal: str, host: str, operation: AclOperation, permission: AclPermissionType
) -> Entry:
    return (principal, host, operation, permission)


def on(resource: Resource, *entries: Entry) -> list[AclBinding]:
    resource_type, name, pattern_type = resource
    return [
        AclBinding(resource_type, name, pattern_type, principal, host, operation, permission)
        for principal, host, operation, permission in entries
    ]


# -- codes and conversion -------------------------------------------------------------


def test_codes_are_kafkas() -> None:
    assert [(t.name, t.value) for t in ResourceType] == [
        ("UNKNOWN", 0),
        ("ANY", 1),
        ("TOPIC", 2),
        ("GROUP", 3),
        ("CLUSTER", 4),
        ("TRANSACTIONAL_ID", 5),
        ("DELEGATION_TOKEN", 6),
        ("USER", 7),
    ]
    assert [(p.name, p.value) for p in PatternType] == [
        ("UNKNOWN", 0),
        ("ANY", 1),
        ("MATCH", 2),
        ("LITERAL", 3),
        ("PREFIXED", 4),
    ]
    assert [o.name for o in AclOperation] == [
        "UNKNOWN", "ANY", "ALL", "READ", "WRITE", "CREATE", "DELETE", "ALTER", "DESCRIBE",
        "CLUSTER_ACTION", "DESCRIBE_CONFIGS", "ALTER_CONFIGS", "IDEMPOTENT_WRITE",
        "CREATE_TOKENS", "DESCRIBE_TOKENS",
    ]  # fmt: skip
    assert [o.value for o in AclOperation] == list(range(15))
    assert [(p.name, p.value) for p in AclPermissionType] == [
        ("UNKNOWN", 0),
        ("ANY", 1),
        ("DENY", 2),
        ("ALLOW", 3),
    ]


def test_row_round_trip_and_unknown_codes() -> None:
    row = (2, "orders", 4, "User:alice", "*", 3, 3)
    binding = AclBinding.from_row(row)
    assert binding == acl(TOPIC, "orders", PREFIXED, "User:alice", "*", Op.READ, ALLOW)
    assert binding.to_row() == row
    assert all(type(v) in (int, str) for v in binding.to_row())
    # Kafka's fromCode: a code it does not know is UNKNOWN, which validation refuses.
    odd = AclBinding.from_row((99, "x", 42, "User:a", "*", 77, 9))
    assert (odd.resource_type, odd.pattern_type, odd.operation, odd.permission_type) == (
        ResourceType.UNKNOWN,
        PatternType.UNKNOWN,
        AclOperation.UNKNOWN,
        AclPermissionType.UNKNOWN,
    )
    assert validate_binding(odd) is not None


def test_from_stored_reads_any_record_with_the_seven_fields() -> None:
    @dataclass(frozen=True)
    class Row:
        resource_type: int
        resource_name: str
        pattern_type: int
        principal: str
        host: str
        operation: int
        permission_type: int

    stored = Row(3, "g", 3, "User:*", "10.0.0.1", 2, 2)
    binding = AclBinding.from_stored(stored)
    assert binding == acl(GROUP, "g", LITERAL, "User:*", "10.0.0.1", Op.ALL, DENY)
    assert AclBinding.from_stored(binding) == binding


def test_filter_from_row_keeps_nulls() -> None:
    f = AclBindingFilter.from_row((1, None, 2, None, None, 1, 1))
    assert f == AclBindingFilter(pattern_type=PatternType.MATCH)
    assert AclBindingFilter.from_row((2, "t", 3, "User:a", "h", 3, 3)) == AclBindingFilter.of(
        acl(TOPIC, "t", LITERAL, "User:a", "h", Op.READ, ALLOW)
    )


# -- StandardAuthorizerTest -----------------------------------------------------------


def foo_acl(op: AclOperation, permission: AclPermissionType) -> AclBinding:
    return acl(TOPIC, "foo_", PREFIXED, "User:bob", "*", op, permission)


def bar_acl(op: AclOperation, permission: AclPermissionType) -> AclBinding:
    return acl(GROUP, "bar", LITERAL, "User:*", "*", op, permission)


@pytest.mark.parametrize(
    ("binding", "operation", "principal", "expected"),
    [
        # testFindResultImplication: these imply DESCRIBE when allowed...
        *[
            (foo_acl(op, ALLOW), Op.DESCRIBE, "User:bob", True)
            for op in (Op.DESCRIBE, Op.READ, Op.WRITE, Op.DELETE, Op.ALTER)
        ],
        (foo_acl(Op.CREATE, ALLOW), Op.DESCRIBE, "User:bob", None),
        # ...but a DENY implies nothing.
        *[
            (foo_acl(op, DENY), Op.DESCRIBE, "User:bob", None)
            for op in (Op.READ, Op.WRITE, Op.DELETE, Op.ALTER)
        ],
        (foo_acl(Op.DESCRIBE, DENY), Op.DESCRIBE, "User:bob", False),
        *[
            (foo_acl(op, ALLOW), Op.DESCRIBE_CONFIGS, "User:bob", True)
            for op in (Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS)
        ],
        (foo_acl(Op.ALTER_CONFIGS, DENY), Op.DESCRIBE_CONFIGS, "User:bob", None),
        (foo_acl(Op.ALTER_CONFIGS, DENY), Op.ALTER_CONFIGS, "User:bob", False),
        # testFindResultPrincipalMatching
        (foo_acl(Op.READ, ALLOW), Op.READ, "User:bob", True),
        (foo_acl(Op.READ, ALLOW), Op.READ, "User:alice", None),
        (bar_acl(Op.READ, DENY), Op.READ, "User:alice", False),
    ],
)
def test_find_result(
    binding: AclBinding, operation: AclOperation, principal: str, expected: bool | None
) -> None:
    # One binding on the resource: it decides (True/False), or, when it does not apply
    # (None), the resource has ACLs and the answer is no whatever the default.
    for default in (False, True):
        authorizer = Authorizer([binding], allow_everyone_if_no_acl_found=default)
        name = "foo_bar" if binding.resource_type == TOPIC else "bar"
        allowed = authorizer.authorize(principal, HOST, operation, binding.resource_type, name)
        assert allowed is bool(expected)


def test_simple_authorizations() -> None:
    authorizer = Authorizer(
        [
            foo_acl(Op.READ, ALLOW),
            foo_acl(Op.WRITE, ALLOW),
            bar_acl(Op.DESCRIBE_CONFIGS, ALLOW),
            bar_acl(Op.ALTER_CONFIGS, ALLOW),
        ],
        super_users=frozenset({"User:superman"}),
    )
    assert authorizer.authorize("User:bob", HOST, Op.READ, TOPIC, "foo_")
    assert authorizer.authorize("User:fred", HOST, Op.ALTER_CONFIGS, GROUP, "bar")


def test_deny_precedence_with_operation_all() -> None:
    authorizer = Authorizer(
        [
            acl(TOPIC, "foo", LITERAL, "User:alice", "*", Op.ALL, DENY),
            acl(TOPIC, "foo", PREFIXED, "User:alice", "*", Op.READ, ALLOW),
            acl(TOPIC, "foo", LITERAL, "User:*", "*", Op.ALL, DENY),
            acl(TOPIC, "foo", PREFIXED, "User:*", "*", Op.DESCRIBE, ALLOW),
        ]
    )

    def check(principal: str, cases: list[tuple[AclOperation, str, bool]]) -> None:
        got = [authorizer.authorize(principal, HOST, op, TOPIC, name) for op, name, _ in cases]
        assert got == [want for _, _, want in cases]

    check(
        "User:alice",
        [
            (Op.WRITE, "foo", False),
            (Op.READ, "foo", False),
            (Op.DESCRIBE, "foo", False),
            (Op.READ, "foobar", True),
        ],
    )
    check(
        "User:bob",
        [
            (Op.DESCRIBE, "foo", False),
            (Op.READ, "foo", False),
            (Op.WRITE, "foo", False),
            (Op.DESCRIBE, "foobaz", True),
            (Op.READ, "foobaz", False),
        ],
    )


def test_topic_acl_with_operation_all() -> None:
    authorizer = Authorizer(
        [
            acl(TOPIC, "foo", LITERAL, "User:*", "*", Op.ALL, ALLOW),
            acl(TOPIC, "bar", PREFIXED, "User:alice", "*", Op.ALL, ALLOW),
            acl(TOPIC, "baz", LITERAL, "User:bob", "*", Op.ALL, ALLOW),
        ]
    )
    table = [
        ("User:alice", Op.WRITE, "foo", True),
        ("User:alice", Op.DESCRIBE_CONFIGS, "bar", True),
        ("User:alice", Op.DESCRIBE, "baz", False),
        ("User:bob", Op.WRITE, "foo", True),
        ("User:bob", Op.READ, "bar", False),
        ("User:bob", Op.DESCRIBE, "baz", True),
        ("User:malory", Op.DESCRIBE, "foo", True),
        ("User:malory", Op.WRITE, "bar", False),
        ("User:malory", Op.READ, "baz", False),
    ]
    for principal, op, name, want in table:
        assert authorizer.authorize(principal, HOST, op, TOPIC, name) is want, (principal, op)


def test_host_address_acl_validation() -> None:
    local, host1, host2 = "127.0.0.1", "192.168.1.1", "192.168.1.2"
    authorizer = Authorizer(
        [
            acl(TOPIC, "foo", LITERAL, "User:alice", host1, Op.READ, DENY),
            acl(TOPIC, "foo", LITERAL, "User:alice", "*", Op.READ, ALLOW),
            acl(TOPIC, "bar", LITERAL, "User:bob", host2, Op.READ, ALLOW),
            acl(TOPIC, "bar", LITERAL, "User:*", local, Op.DESCRIBE, ALLOW),
        ]
    )
    actions = [(Op.READ, "foo"), (Op.READ, "bar"), (Op.DESCRIBE, "bar")]
    table = {
        ("User:alice", local): [True, False, True],
        ("User:alice", host1): [False, False, False],
        ("User:alice", host2): [True, False, False],
        ("User:bob", local): [False, False, True],
        ("User:bob", host1): [False, False, False],
        ("User:bob", host2): [False, True, True],
    }
    for (principal, host), want in table.items():
        got = [authorizer.authorize(principal, host, op, TOPIC, name) for op, name in actions]
        assert got == want, (principal, host)


def test_authorization_with_many_acls() -> None:
    authorizer = Authorizer(
        [
            acl(TOPIC, "green2", LITERAL, "User:*", "*", Op.READ, ALLOW),
            acl(TOPIC, "green", PREFIXED, "User:bob", "*", Op.READ, ALLOW),
            acl(TOPIC, "betamax4", LITERAL, "User:bob", "*", Op.READ, ALLOW),
            acl(TOPIC, "betamax", LITERAL, "User:bob", "*", Op.READ, ALLOW),
            acl(TOPIC, "beta", PREFIXED, "User:*", "*", Op.READ, ALLOW),
            acl(TOPIC, "alpha", PREFIXED, "User:*", "*", Op.READ, ALLOW),
            acl(TOPIC, "alp", PREFIXED, "User:bob", "*", Op.READ, DENY),
            acl(GROUP, "*", LITERAL, "User:bob", "*", Op.WRITE, ALLOW),
            acl(GROUP, "wheel", LITERAL, "User:*", "*", Op.WRITE, DENY),
        ],
        super_users=frozenset({"User:superman"}),
    )
    bob = "User:bob"
    assert authorizer.authorize(bob, HOST, Op.READ, TOPIC, "green1")
    assert not authorizer.authorize(bob, HOST, Op.WRITE, GROUP, "wheel")
    assert not authorizer.authorize(bob, HOST, Op.READ, TOPIC, "alpha")
    assert authorizer.authorize(bob, HOST, Op.WRITE, GROUP, "arbitrary")
    assert not authorizer.authorize(bob, HOST, Op.READ, TOPIC, "ala")
    # A super user passes even a DENY that covers it.
    assert authorizer.authorize("User:superman", HOST, Op.WRITE, GROUP, "wheel")
    assert authorizer.authorize("User:superman", HOST, Op.READ, TOPIC, "green1")


def test_prefix_acls() -> None:
    authorizer = Authorizer(
        [
            acl(TOPIC, "fooa", PREFIXED, "User:alice", "*", Op.ALL, ALLOW),
            acl(TOPIC, "foobar", LITERAL, "User:bob", "*", Op.ALL, ALLOW),
            acl(TOPIC, "f", PREFIXED, "User:bob", "*", Op.ALL, ALLOW),
        ]
    )
    assert authorizer.authorize("User:bob", HOST, Op.WRITE, TOPIC, "foobarr")
    assert not authorizer.authorize("User:bob", HOST, Op.READ, TOPIC, "goobar")
    assert authorizer.authorize("User:bob", HOST, Op.READ, TOPIC, "fooa")
    assert authorizer.authorize("User:alice", HOST, Op.DESCRIBE, TOPIC, "fooa")
    assert not authorizer.authorize("User:alice", HOST, Op.WRITE, TOPIC, "bar")
    assert not authorizer.authorize("User:alice", HOST, Op.READ, TOPIC, "baz")


@pytest.mark.parametrize("allow_everyone", [True, False])
def test_allow_everyone_if_no_acl_found(allow_everyone: bool) -> None:
    authorizer = Authorizer(
        [acl(TOPIC, "topic1", LITERAL, "User:Alice", "*", Op.READ, ALLOW)],
        super_users=frozenset({"User:alice", "User:chris"}),
        allow_everyone_if_no_acl_found=allow_everyone,
    )
    # ACLs on topic1 that do not apply to Bob deny him even with the default on...
    assert not authorizer.authorize("User:Bob", HOST, Op.READ, TOPIC, "topic1")
    # ...while topic2 has none at all, so the default decides.
    assert authorizer.authorize("User:Bob", HOST, Op.READ, TOPIC, "topic2") is allow_everyone
    # Principal names are case sensitive: User:alice is the super user, not User:Alice.
    assert authorizer.authorize("User:alice", HOST, Op.DELETE, TOPIC, "topic1")


# -- AuthorizerTest (core) --------------------------------------------------------------

ALICE = "User:alice"
SUPERS = frozenset({"User:superuser1", "User:superuser2"})
RESOURCE = (TOPIC, "foo-4b1c", LITERAL)
WILDCARD_TOPIC = (TOPIC, "*", LITERAL)
PREFIXED_FOO = (TOPIC, "foo", PREFIXED)
ALLOW_READ = entry("User:*", "*", Op.READ, ALLOW)
ALLOW_WRITE = entry("User:*", "*", Op.WRITE, ALLOW)
DENY_READ = entry("User:*", "*", Op.READ, DENY)


def kafka_authorizer(bindings: list[AclBinding], allow_everyone: bool = False) -> Authorizer:
    return Authorizer(bindings, SUPERS, allow_everyone)


def test_topic_acl() -> None:
    user1, user2, user3 = "User:alice", "User:rob", "User:batman"
    host1, host2 = "192.168.1.1", "192.168.1.2"
    authorizer = kafka_authorizer(
        on(
            RESOURCE,
            entry(user1, host1, Op.READ, ALLOW),
            entry(user1, host2, Op.READ, ALLOW),
            entry(user1, host1, Op.READ, DENY),
            entry(user1, host1, Op.WRITE, ALLOW),
            entry(user1, "*", Op.DESCRIBE, ALLOW),
            entry(user2, "*", Op.READ, ALLOW),
            entry(user3, "*", Op.WRITE, ALLOW),
        )
    )
    name = RESOURCE[1]
    table = [
        (user1, host2, Op.READ, True),
        (user1, host1, Op.READ, False),
        (user1, host1, Op.WRITE, True),
        (user1, host2, Op.WRITE, False),
        (user1, host1, Op.DESCRIBE, True),
        (user1, host2, Op.DESCRIBE, True),
        (user1, host1, Op.ALTER, False),
        (user1, host2, Op.ALTER, False),
        (user2, host1, Op.DESCRIBE, True),
        (user3, host1, Op.DESCRIBE, True),
        (user2, host1, Op.READ, True),
        (user3, host1, Op.WRITE, True),
    ]
    for principal, host, op, want in table:
        assert authorizer.authorize(principal, host, op, TOPIC, name) is want, (principal, op)


def test_deny_takes_precedence_and_allow_all_access() -> None:
    host = "192.168.2.1"
    allow_all = entry("User:*", "*", Op.ALL, ALLOW)
    authorizer = kafka_authorizer(on(RESOURCE, allow_all, entry(ALICE, host, Op.ALL, DENY)))
    assert not authorizer.authorize(ALICE, host, Op.READ, *RESOURCE[:2])
    assert authorizer.authorize(ALICE, "192.0.4.4", Op.READ, *RESOURCE[:2])
    authorizer = kafka_authorizer(on(RESOURCE, allow_all))
    assert authorizer.authorize("User:random", "192.0.4.4", Op.READ, *RESOURCE[:2])


def test_super_user_has_access() -> None:
    authorizer = kafka_authorizer(on(RESOURCE, entry("User:*", "*", Op.ALL, DENY)))
    for user in ("User:superuser1", "User:superuser2"):
        assert authorizer.authorize(user, "192.0.4.4", Op.READ, *RESOURCE[:2])
    assert not authorizer.authorize(ALICE, "192.0.4.4", Op.READ, *RESOURCE[:2])


def test_wildcard_acls() -> None:
    assert not kafka_authorizer([]).authorize(ALICE, HOST, Op.READ, *RESOURCE[:2])
    host1 = "192.168.3.1"
    read_anywhere = on(WILDCARD_TOPIC, entry(ALICE, host1, Op.READ, ALLOW))
    authorizer = kafka_authorizer(read_anywhere)
    assert authorizer.authorize(ALICE, host1, Op.READ, *RESOURCE[:2])
    write_here = on(RESOURCE, entry(ALICE, host1, Op.WRITE, ALLOW))
    deny_write_anywhere = on(WILDCARD_TOPIC, entry(ALICE, host1, Op.WRITE, DENY))
    authorizer = kafka_authorizer(read_anywhere + write_here + deny_write_anywhere)
    assert not authorizer.authorize(ALICE, host1, Op.WRITE, *RESOURCE[:2])
    assert authorizer.authorize(ALICE, host1, Op.READ, *RESOURCE[:2])


def test_no_acl_found_and_override() -> None:
    assert not kafka_authorizer([]).authorize(ALICE, HOST, Op.READ, *RESOURCE[:2])
    assert kafka_authorizer([], allow_everyone=True).authorize(ALICE, HOST, Op.READ, *RESOURCE[:2])


IMPLIED_BY_ALLOW: dict[AclOperation, set[AclOperation]] = {
    Op.ALL: set(CONCRETE_OPS),
    Op.READ: {Op.DESCRIBE},
    Op.WRITE: {Op.DESCRIBE},
    Op.DELETE: {Op.DESCRIBE},
    Op.ALTER: {Op.DESCRIBE},
    Op.ALTER_CONFIGS: {Op.DESCRIBE_CONFIGS},
    Op.CREATE: set(),
    Op.DESCRIBE: set(),
    Op.IDEMPOTENT_WRITE: set(),
}


@pytest.mark.parametrize("parent", list(IMPLIED_BY_ALLOW))
def test_acl_inheritance_of_allow(parent: AclOperation) -> None:
    authorizer = kafka_authorizer([acl(CLUSTER, CLUSTER_NAME, LITERAL, ALICE, "*", parent, ALLOW)])
    for op in CONCRETE_OPS:
        want = op == parent or op in IMPLIED_BY_ALLOW[parent]
        assert authorizer.authorize(ALICE, "192.168.3.1", op, CLUSTER, CLUSTER_NAME) is want, op


@pytest.mark.parametrize(
    ("parent", "denied"),
    [
        (Op.ALL, set(CONCRETE_OPS)),
        (Op.DESCRIBE, set()),
        (Op.DESCRIBE_CONFIGS, set()),
        (Op.READ, set()),  # a DENY of READ leaves DESCRIBE allowed
        (Op.ALTER_CONFIGS, set()),
    ],
)
def test_acl_inheritance_of_deny(parent: AclOperation, denied: set[AclOperation]) -> None:
    authorizer = kafka_authorizer(
        [
            acl(CLUSTER, CLUSTER_NAME, LITERAL, ALICE, "*", parent, DENY),
            acl(CLUSTER, CLUSTER_NAME, LITERAL, ALICE, "*", Op.ALL, ALLOW),
        ]
    )
    for op in CONCRETE_OPS:
        want = not (op == parent or op in denied)
        assert authorizer.authorize(ALICE, "192.168.3.1", op, CLUSTER, CLUSTER_NAME) is want, op


def test_access_through_wildcard_and_prefixed_resources() -> None:
    name = RESOURCE[1]
    assert kafka_authorizer(on(WILDCARD_TOPIC, ALLOW_READ)).authorize(
        ALICE, HOST, Op.READ, TOPIC, name
    )
    assert kafka_authorizer(on(PREFIXED_FOO, ALLOW_READ)).authorize(
        ALICE, HOST, Op.READ, TOPIC, name
    )


def test_authorize_with_prefixed_resource_among_many_denies() -> None:
    bindings = [
        *on((TOPIC, "a_other", LITERAL), DENY_READ),
        *on((TOPIC, "a_other", PREFIXED), DENY_READ),
        *on((TOPIC, "foo-2a7f", PREFIXED), DENY_READ),
        *on((TOPIC, "foo-9c1e", PREFIXED), DENY_READ),
        *on((TOPIC, "foo-0b3d-zzz", PREFIXED), DENY_READ),
        *on((TOPIC, "fooo-77aa", PREFIXED), DENY_READ),
        *on((TOPIC, "fo-5e5e", PREFIXED), DENY_READ),
        *on((TOPIC, "fop-1111", PREFIXED), DENY_READ),
        *on((TOPIC, "fon-2222", PREFIXED), DENY_READ),
        *on((TOPIC, "fon-", PREFIXED), DENY_READ),
        *on((TOPIC, "z_other", PREFIXED), DENY_READ),
        *on((TOPIC, "z_other", LITERAL), DENY_READ),
        *on(PREFIXED_FOO, ALLOW_READ),
    ]
    authorizer = kafka_authorizer(bindings)
    assert authorizer.authorize(ALICE, HOST, Op.READ, *RESOURCE[:2])
    assert not authorizer.authorize(ALICE, HOST, Op.READ, TOPIC, "foo-2a7f-x")
    assert not authorizer.authorize(ALICE, HOST, Op.READ, TOPIC, "a_other")


def test_single_character_resource_acls() -> None:
    authorizer = kafka_authorizer(on((TOPIC, "f", LITERAL), ALLOW_READ))
    assert authorizer.authorize(ALICE, HOST, Op.READ, TOPIC, "f")
    assert not authorizer.authorize(ALICE, HOST, Op.READ, TOPIC, "foo")
    authorizer = kafka_authorizer(
        on((TOPIC, "f", LITERAL), ALLOW_READ) + on((TOPIC, "_", PREFIXED), ALLOW_READ)
    )
    assert authorizer.authorize(ALICE, HOST, Op.READ, TOPIC, "_foo")
    assert authorizer.authorize(ALICE, HOST, Op.READ, TOPIC, "_")
    assert not authorizer.authorize(ALICE, HOST, Op.READ, TOPIC, "foo_")


def test_authorize_with_empty_resource_name() -> None:
    assert not kafka_authorizer([]).authorize(ALICE, HOST, Op.READ, GROUP, "")
    authorizer = kafka_authorizer(on((GROUP, "*", LITERAL), ALLOW_READ))
    assert authorizer.authorize(ALICE, HOST, Op.READ, GROUP, "")


def test_resource_types_are_separate() -> None:
    authorizer = kafka_authorizer(on((GROUP, "*", LITERAL), ALLOW_READ))
    assert not authorizer.authorize(ALICE, HOST, Op.READ, TOPIC, "x")
    # No ACL at all on any TOPIC: the default decides there.
    assert Authorizer(authorizer.bindings, SUPERS, True).authorize(ALICE, HOST, Op.READ, TOPIC, "x")


def test_wildcard_principal_is_user_star_only() -> None:
    authorizer = kafka_authorizer(
        on(RESOURCE, entry("Group:*", "*", Op.READ, ALLOW), entry("User:*", "*", Op.WRITE, ALLOW))
    )
    name = RESOURCE[1]
    assert not authorizer.authorize("Group:ops", HOST, Op.READ, TOPIC, name)
    assert authorizer.authorize("Group:*", HOST, Op.READ, TOPIC, name)
    # "User:*" stands for every principal, whatever its type.
    assert authorizer.authorize("Group:ops", HOST, Op.WRITE, TOPIC, name)


# -- authorize_any: BaseAuthorizerTest's authorizeByResourceType cases ----------------

U1, U2 = "User:user1", "User:user2"
H1, H2 = "192.168.1.1", "192.168.1.2"


def test_by_resource_type_add_and_remove() -> None:
    resource1 = (TOPIC, "sb1-77", LITERAL)
    deny_read = entry(U1, H1, Op.READ, DENY)
    allow_read = entry(U1, H1, Op.READ, ALLOW)
    assert not kafka_authorizer([]).authorize_any(U1, H1, Op.READ, TOPIC)
    assert kafka_authorizer(on(resource1, allow_read)).authorize_any(U1, H1, Op.READ, TOPIC)
    both = on(resource1, allow_read, deny_read)
    assert not kafka_authorizer(both).authorize_any(U1, H1, Op.READ, TOPIC)


def test_by_resource_type_unrelated_deny_wont_dominate_allow() -> None:
    resource1 = (TOPIC, "sb1-1", LITERAL)
    resource2 = (TOPIC, "sb2-2", LITERAL)
    bindings = [
        *on(
            resource1,
            entry(U1, H1, Op.READ, DENY),
            entry(U2, H1, Op.READ, DENY),
            entry(U1, H2, Op.WRITE, DENY),
            entry(U2, H2, Op.READ, DENY),
            entry(U1, H2, Op.READ, ALLOW),
        ),
        *on(resource2, entry(U1, H2, Op.READ, DENY)),
        *on((GROUP, "s", PREFIXED), entry(U1, H2, Op.READ, DENY)),
    ]
    authorizer = kafka_authorizer(bindings)
    for resource_type in (TOPIC, GROUP, TXN, CLUSTER):
        assert not authorizer.authorize_any(U1, H1, Op.READ, resource_type)
    assert authorizer.authorize_any(U1, H2, Op.READ, TOPIC)


def test_by_resource_type_deny_takes_precedence() -> None:
    resource1 = (TOPIC, "sb1-3", LITERAL)
    allow = on(resource1, entry(U1, H1, Op.WRITE, ALLOW))
    assert kafka_authorizer(allow).authorize_any(U1, H1, Op.WRITE, TOPIC)
    deny = on(resource1, entry(U1, H1, Op.WRITE, DENY))
    assert not kafka_authorizer(allow + deny).authorize_any(U1, H1, Op.WRITE, TOPIC)


def test_by_resource_type_prefixed_deny_dominates() -> None:
    allow = entry(U1, H1, Op.READ, ALLOW)
    deny = entry(U1, H1, Op.READ, DENY)
    steps = [
        (("abcde", allow), True),
        (("abcd", deny), False),
        (("abc", allow), True),
        (("a", deny), False),
        (("ab", allow), False),
    ]
    bindings: list[AclBinding] = []
    for (prefix, ace), want in steps:
        bindings += on((GROUP, prefix, PREFIXED), ace)
        assert kafka_authorizer(bindings).authorize_any(U1, H1, Op.READ, GROUP) is want, prefix


def test_by_resource_type_wildcard_deny_dominates() -> None:
    allow = entry(U1, H1, Op.WRITE, ALLOW)
    deny = entry(U1, H1, Op.WRITE, DENY)
    steps = [
        (((GROUP, "hello", PREFIXED), allow), True),
        (((GROUP, "*", LITERAL), deny), False),
        (((GROUP, "*", LITERAL), allow), False),
        (((GROUP, "aloha", LITERAL), allow), False),
    ]
    bindings: list[AclBinding] = []
    for (resource, ace), want in steps:
        bindings += on(resource, ace)
        assert kafka_authorizer(bindings).authorize_any(U1, H1, Op.WRITE, GROUP) is want


def test_by_resource_type_with_all_operation() -> None:
    resource1 = (TOPIC, "sb1-4", LITERAL)
    assert not kafka_authorizer([]).authorize_any(U1, H1, Op.READ, TOPIC)
    bindings = on(resource1, entry(U1, H1, Op.WRITE, DENY), entry(U1, H1, Op.ALL, ALLOW))
    assert kafka_authorizer(bindings).authorize_any(U1, H1, Op.READ, TOPIC)
    bindings += on(resource1, entry(U1, H1, Op.ALL, DENY))
    assert not kafka_authorizer(bindings).authorize_any(U1, H1, Op.READ, TOPIC)


def test_by_resource_type_with_all_hosts() -> None:
    resource1, resource2 = (TOPIC, "sb1-5", LITERAL), (TOPIC, "sb2-5", LITERAL)
    bindings = on(resource1, entry(U1, H1, Op.READ, ALLOW))
    assert kafka_authorizer(bindings).authorize_any(U1, H1, Op.READ, TOPIC)
    bindings += on(resource1, entry(U1, "*", Op.READ, DENY))
    assert not kafka_authorizer(bindings).authorize_any(U1, H1, Op.READ, TOPIC)
    bindings += on(resource2, entry(U1, H1, Op.READ, DENY))
    assert not kafka_authorizer(bindings).authorize_any(U1, H1, Op.READ, TOPIC)
    assert not kafka_authorizer(bindings).authorize_any(U1, H2, Op.READ, TOPIC)
    bindings += on(resource2, entry(U1, "*", Op.READ, ALLOW))
    assert kafka_authorizer(bindings).authorize_any(U1, H2, Op.READ, TOPIC)
    bindings += on(resource2, entry(U1, "*", Op.READ, DENY))
    assert not kafka_authorizer(bindings).authorize_any(U1, H2, Op.READ, TOPIC)


def test_by_resource_type_with_all_principals() -> None:
    resource1, resource2 = (TOPIC, "sb1-6", LITERAL), (TOPIC, "sb2-6", LITERAL)
    bindings = on(resource1, entry(U1, H1, Op.READ, ALLOW))
    assert kafka_authorizer(bindings).authorize_any(U1, H1, Op.READ, TOPIC)
    bindings += on(resource1, entry("User:*", H1, Op.READ, DENY))
    assert not kafka_authorizer(bindings).authorize_any(U1, H1, Op.READ, TOPIC)
    bindings += on(resource2, entry(U1, H1, Op.READ, DENY))
    assert not kafka_authorizer(bindings).authorize_any(U1, H1, Op.READ, TOPIC)
    assert not kafka_authorizer(bindings).authorize_any(U2, H1, Op.READ, TOPIC)
    bindings += on(resource2, entry("User:*", H1, Op.READ, ALLOW))
    assert kafka_authorizer(bindings).authorize_any(U2, H1, Op.READ, TOPIC)
    bindings += on(resource2, entry("User:*", H1, Op.READ, DENY))
    assert not kafka_authorizer(bindings).authorize_any(U2, H1, Op.READ, TOPIC)


def test_by_resource_type_super_user_and_no_acl_override() -> None:
    deny_all = entry("User:*", "*", Op.ALL, DENY)
    bindings = [
        *on((TOPIC, "*", LITERAL), deny_all),
        *on((CLUSTER, "*", LITERAL), deny_all),
        *on((GROUP, "*", LITERAL), deny_all),
        *on((TXN, "*", LITERAL), deny_all),
    ]
    authorizer = kafka_authorizer(bindings)
    for resource_type in (TOPIC, CLUSTER, GROUP, TXN):
        assert authorizer.authorize_any("User:superuser1", "192.0.4.4", Op.READ, resource_type)
        assert not authorizer.authorize_any(ALICE, "192.0.4.4", Op.READ, resource_type)
    everyone = kafka_authorizer([], allow_everyone=True)
    assert everyone.authorize_any(ALICE, HOST, Op.READ, TOPIC)
    assert everyone.authorize_any(ALICE, HOST, Op.WRITE, TOPIC)


def test_by_resource_type_details() -> None:
    # Literal ALLOW against a literal DENY of the same name; a prefixed DENY does not
    # dominate a shorter prefixed ALLOW; a literal DENY never dominates a prefix.
    lit_allow = on((TOPIC, "t1", LITERAL), entry(U1, "*", Op.WRITE, ALLOW))
    lit_deny = on((TOPIC, "t1", LITERAL), entry(U1, "*", Op.WRITE, DENY))
    assert not kafka_authorizer(lit_allow + lit_deny).authorize_any(U1, H1, Op.WRITE, TOPIC)
    pre_allow = on((TOPIC, "t", PREFIXED), entry(U1, "*", Op.WRITE, ALLOW))
    longer_deny = on((TOPIC, "t1", PREFIXED), entry(U1, "*", Op.WRITE, DENY))
    assert kafka_authorizer(pre_allow + longer_deny).authorize_any(U1, H1, Op.WRITE, TOPIC)
    same_lit_deny = on((TOPIC, "t", LITERAL), entry(U1, "*", Op.WRITE, DENY))
    assert kafka_authorizer(pre_allow + same_lit_deny).authorize_any(U1, H1, Op.WRITE, TOPIC)
    same_pre_deny = on((TOPIC, "t", PREFIXED), entry(U1, "*", Op.WRITE, DENY))
    assert not kafka_authorizer(pre_allow + same_pre_deny).authorize_any(U1, H1, Op.WRITE, TOPIC)
    # No implied operations here beyond what the probe of "hardcode" finds: READ on
    # one topic does not make DESCRIBE on "some topic" pass...
    read_one = on((TOPIC, "t1", LITERAL), entry(U1, "*", Op.READ, ALLOW))
    assert not kafka_authorizer(read_one).authorize_any(U1, H1, Op.DESCRIBE, TOPIC)
    # ...but READ on every topic does, through the probe.
    read_all = on((TOPIC, "*", LITERAL), entry(U1, "*", Op.READ, ALLOW))
    assert kafka_authorizer(read_all).authorize_any(U1, H1, Op.DESCRIBE, TOPIC)
    # Other principals' and hosts' bindings are ignored.
    assert not kafka_authorizer(lit_allow).authorize_any(U2, H1, Op.WRITE, TOPIC)
    host_bound = on((TOPIC, "t1", LITERAL), entry(U1, H2, Op.WRITE, ALLOW))
    assert not kafka_authorizer(host_bound).authorize_any(U1, H1, Op.WRITE, TOPIC)
    # IDEMPOTENT_WRITE as InitProducerId asks: WRITE on some topic.
    assert kafka_authorizer(lit_allow).authorize_any(U1, H1, Op.WRITE, TOPIC)
    assert not kafka_authorizer(lit_allow).authorize(U1, H1, Op.IDEMPOTENT_WRITE, CLUSTER, "x")


@pytest.mark.parametrize(
    ("operation", "resource_type"),
    [
        (Op.READ, ResourceType.ANY),
        (Op.READ, ResourceType.UNKNOWN),
        (Op.ANY, TOPIC),
        (Op.UNKNOWN, TOPIC),
    ],
)
def test_by_resource_type_needs_concrete_arguments(
    operation: AclOperation, resource_type: ResourceType
) -> None:
    with pytest.raises(ValueError):
        kafka_authorizer([]).authorize_any(ALICE, HOST, operation, resource_type)


# -- filters (ResourcePatternFilterTest, AccessControlEntryFilter, testAclsFilter) ----


def pattern_filter(
    resource_type: ResourceType, name: str | None, pattern: PatternType
) -> AclBindingFilter:
    return AclBindingFilter(resource_type, name, pattern)


def pattern(resource_type: ResourceType, name: str, pattern_type: PatternType) -> AclBinding:
    return acl(resource_type, name, pattern_type, ALICE, "*", Op.READ, ALLOW)


ANY_T, MATCH = PatternType.ANY, PatternType.MATCH


@pytest.mark.parametrize(
    ("flt", "binding", "want"),
    [
        (pattern_filter(TOPIC, "Name", LITERAL), pattern(GROUP, "Name", LITERAL), False),
        (pattern_filter(TOPIC, "Different", PREFIXED), pattern(TOPIC, "Name", PREFIXED), False),
        (pattern_filter(TOPIC, "NAME", LITERAL), pattern(TOPIC, "Name", LITERAL), False),
        (pattern_filter(TOPIC, "Name", LITERAL), pattern(TOPIC, "Name", PREFIXED), False),
        (
            pattern_filter(ResourceType.ANY, "Name", PREFIXED),
            pattern(TOPIC, "Name", PREFIXED),
            True,
        ),
        (pattern_filter(TOPIC, None, PREFIXED), pattern(TOPIC, "Name", PREFIXED), True),
        (pattern_filter(TOPIC, None, ANY_T), pattern(TOPIC, "Name", PREFIXED), True),
        (pattern_filter(TOPIC, None, MATCH), pattern(TOPIC, "Name", PREFIXED), True),
        (pattern_filter(TOPIC, "Name", LITERAL), pattern(TOPIC, "Name", LITERAL), True),
        (pattern_filter(TOPIC, "Name", ANY_T), pattern(TOPIC, "Name", LITERAL), True),
        (pattern_filter(TOPIC, "Name", MATCH), pattern(TOPIC, "Name", LITERAL), True),
        (pattern_filter(TOPIC, "Name-something", MATCH), pattern(TOPIC, "Name", LITERAL), False),
        (pattern_filter(TOPIC, "*", LITERAL), pattern(TOPIC, "*", LITERAL), True),
        (pattern_filter(TOPIC, "Name", LITERAL), pattern(TOPIC, "*", LITERAL), False),
        (pattern_filter(TOPIC, "*", LITERAL), pattern(TOPIC, "Name", LITERAL), False),
        (pattern_filter(TOPIC, "Name", ANY_T), pattern(TOPIC, "*", LITERAL), False),
        (pattern_filter(TOPIC, "Name", MATCH), pattern(TOPIC, "*", LITERAL), True),
        (pattern_filter(TOPIC, "Name", PREFIXED), pattern(TOPIC, "Name", PREFIXED), True),
        (pattern_filter(TOPIC, "Name", PREFIXED), pattern(TOPIC, "Name-x", PREFIXED), False),
        (pattern_filter(TOPIC, "Name-x", PREFIXED), pattern(TOPIC, "Name", PREFIXED), False),
        (pattern_filter(TOPIC, "Name-x", ANY_T), pattern(TOPIC, "Name", PREFIXED), False),
        (pattern_filter(TOPIC, "Name-x", MATCH), pattern(TOPIC, "Name", PREFIXED), True),
        (pattern_filter(ResourceType.UNKNOWN, None, ANY_T), pattern(TOPIC, "Name", LITERAL), False),
    ],
)
def test_resource_pattern_filter(flt: AclBindingFilter, binding: AclBinding, want: bool) -> None:
    assert matches(flt, binding) is want


def test_entry_filter() -> None:
    binding = acl(TOPIC, "t", LITERAL, "User:alice", "10.0.0.1", Op.WRITE, DENY)
    assert matches(AclBindingFilter(), binding)
    assert matches(AclBindingFilter.of(binding), binding)
    assert matches(AclBindingFilter(principal="User:alice", host="10.0.0.1"), binding)
    assert not matches(AclBindingFilter(principal="User:*"), binding)  # no wildcard here
    assert not matches(AclBindingFilter(host="*"), binding)
    assert matches(AclBindingFilter(operation=Op.WRITE, permission_type=DENY), binding)
    assert not matches(AclBindingFilter(operation=Op.ALL), binding)
    assert not matches(AclBindingFilter(permission_type=ALLOW), binding)


def test_acls_filter() -> None:
    principal = ALICE
    acl1 = acl(TOPIC, "foo-1", LITERAL, principal, "*", Op.READ, ALLOW)
    acl2 = acl(TOPIC, "foo-1", LITERAL, principal, "192.168.0.1", Op.WRITE, ALLOW)
    acl3 = acl(TOPIC, "bar-2", LITERAL, principal, "*", Op.DESCRIBE, ALLOW)
    acl4 = acl(TOPIC, "bar-", PREFIXED, "User:*", "*", Op.READ, ALLOW)
    every = [acl1, acl2, acl3, acl4]

    def chosen(flt: AclBindingFilter) -> list[AclBinding]:
        return [b for b in every if matches(flt, b)]

    assert chosen(AclBindingFilter()) == every
    assert chosen(AclBindingFilter(TOPIC, "foo-1", LITERAL)) == [acl1, acl2]
    assert chosen(AclBindingFilter(TOPIC, "bar-", PREFIXED)) == [acl4]
    assert chosen(AclBindingFilter(ResourceType.ANY, "bar-2", MATCH)) == [acl3, acl4]
    assert chosen(AclBindingFilter.of(acl1)) == [acl1]
    assert chosen(AclBindingFilter(TOPIC, "baz", ANY_T)) == []
    # testGetAclsPrincipal: a principal filter is an exact string match.
    assert chosen(AclBindingFilter(principal="User:*")) == [acl4]
    assert chosen(AclBindingFilter(principal=principal)) == [acl1, acl2, acl3]


# -- validation (AclApis.handleCreateAcls, AclControlManager.validateNewAcl) ---------


def good(**changes: object) -> AclBinding:
    fields: dict[str, object] = {
        "resource_type": TOPIC,
        "resource_name": "orders",
        "pattern_type": LITERAL,
        "principal": "User:alice",
        "host": "*",
        "operation": Op.READ,
        "permission_type": ALLOW,
    }
    fields.update(changes)
    return AclBinding(**fields)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("binding", "message"),
    [
        (good(), None),
        (good(pattern_type=PREFIXED), None),
        (good(resource_name="*"), None),
        (good(principal="User:*", host="10.0.0.1", permission_type=DENY), None),
        (good(principal=":alice"), None),  # Kafka only asks for a colon
        (good(resource_type=CLUSTER, resource_name=CLUSTER_NAME, operation=Op.ALL), None),
        (good(resource_type=TXN, operation=Op.WRITE), None),
        (
            good(resource_type=CLUSTER, resource_name="other"),
            "The only valid name for the CLUSTER resource is kafka-cluster",
        ),
        (
            good(resource_type=CLUSTER, resource_name="*"),
            "The only valid name for the CLUSTER resource is kafka-cluster",
        ),
        (good(resource_name=""), "Invalid empty resource name"),
        (good(resource_type=ResourceType.ANY), "Invalid resourceType ANY"),
        (good(resource_type=ResourceType.UNKNOWN), "Invalid resourceType UNKNOWN"),
        (good(pattern_type=PatternType.MATCH), "Invalid patternType MATCH"),
        (good(pattern_type=PatternType.ANY), "Invalid patternType ANY"),
        (good(pattern_type=PatternType.UNKNOWN), "Invalid patternType UNKNOWN"),
        (good(operation=Op.ANY), "Invalid operation ANY"),
        (good(operation=Op.UNKNOWN), "Invalid operation UNKNOWN"),
        (good(permission_type=AclPermissionType.ANY), "Invalid permissionType ANY"),
        (good(permission_type=AclPermissionType.UNKNOWN), "Invalid permissionType UNKNOWN"),
        (
            good(principal="invalid"),
            "Could not parse principal from `invalid` (no colon is present separating the "
            "principal type from the principal name)",
        ),
        (
            good(principal=""),
            "Could not parse principal from `` (no colon is present separating the "
            "principal type from the principal name)",
        ),
    ],
)
def test_validate_binding(binding: AclBinding, message: str | None) -> None:
    error = validate_binding(binding)
    if message is None:
        assert error is None
    else:
        assert error is not None
        assert (error.code, error.message) == (ErrorCode.invalid_request, message)


@pytest.mark.parametrize("resource_type", [ResourceType.DELEGATION_TOKEN, ResourceType.USER])
def test_validate_refuses_resource_types_driftlog_lacks(resource_type: ResourceType) -> None:
    error = validate_binding(good(resource_type=resource_type, operation=Op.DESCRIBE))
    assert error is not None
    assert error.code == ErrorCode.invalid_request
    assert resource_type.name in error.message


def test_validate_filter() -> None:
    assert validate_filter(AclBindingFilter()) is None
    assert validate_filter(AclBindingFilter(ResourceType.ANY, "*", LITERAL, "User:*", "*")) is None
    assert validate_filter(AclBindingFilter(pattern_type=MATCH)) is None
    for flt, message in [
        (AclBindingFilter(pattern_type=PatternType.UNKNOWN), "Unknown patternFilter."),
        (AclBindingFilter(resource_type=ResourceType.UNKNOWN), "Unknown patternFilter."),
        (AclBindingFilter(operation=Op.UNKNOWN), "Unknown entryFilter."),
        (AclBindingFilter(permission_type=AclPermissionType.UNKNOWN), "Unknown entryFilter."),
    ]:
        error = validate_filter(flt)
        assert error is not None and (error.code, error.message) == (
            ErrorCode.invalid_request,
            message,
        )


def test_parse_super_users() -> None:
    assert parse_super_users("") == frozenset()
    assert parse_super_users(" ") == frozenset()
    assert parse_super_users("User:bob;User:alice ") == {"User:bob", "User:alice"}
    assert parse_super_users(";  User:bob  ;  User:alice ") == {"User:bob", "User:alice"}
    with pytest.raises(ValueError, match=r"principalType:principalName but got bob$"):
        parse_super_users("bob;:alice")


# -- authorized operations (AuthHelper.authorizedOperations, KIP-430) ----------------


def bits(*ops: AclOperation) -> int:
    return sum(1 << int(op) for op in ops)


def test_supported_operations_are_kafkas() -> None:
    assert supported_operations(TOPIC) == {
        Op.READ, Op.WRITE, Op.CREATE, Op.DESCRIBE, Op.DELETE, Op.ALTER,
        Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS,
    }  # fmt: skip
    assert supported_operations(GROUP) == {
        Op.READ, Op.DESCRIBE, Op.DELETE, Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS,
    }  # fmt: skip
    assert supported_operations(CLUSTER) == {
        Op.CREATE, Op.CLUSTER_ACTION, Op.DESCRIBE_CONFIGS, Op.ALTER_CONFIGS,
        Op.IDEMPOTENT_WRITE, Op.ALTER, Op.DESCRIBE,
    }  # fmt: skip
    assert supported_operations(TXN) == {Op.DESCRIBE, Op.WRITE}
    with pytest.raises(ValueError):
        supported_operations(ResourceType.ANY)


def test_authorized_operations() -> None:
    authorizer = Authorizer(
        [
            acl(TOPIC, "orders", LITERAL, ALICE, "*", Op.READ, ALLOW),
            acl(TOPIC, "ord", PREFIXED, ALICE, "*", Op.ALTER_CONFIGS, ALLOW),
            acl(TOPIC, "orders", LITERAL, ALICE, "*", Op.DESCRIBE_CONFIGS, DENY),
            acl(CLUSTER, CLUSTER_NAME, LITERAL, "User:*", "*", Op.ALL, ALLOW),
        ],
        super_users=frozenset({"User:admin"}),
    )
    got = authorized_operations(authorizer, ALICE, HOST, TOPIC, "orders")
    assert got == bits(Op.READ, Op.DESCRIBE, Op.ALTER_CONFIGS)
    assert authorized_operations(authorizer, "User:bob", HOST, TOPIC, "orders") == 0
    assert authorized_operations(authorizer, "User:admin", HOST, TOPIC, "orders") == bits(
        *supported_operations(TOPIC)
    )
    cluster = authorized_operations(authorizer, "User:bob", HOST, CLUSTER, CLUSTER_NAME)
    assert cluster == bits(*supported_operations(CLUSTER))
    # Explicit candidates, and no authorizer at all (Kafka's "authorizer.forall").
    only = authorized_operations(authorizer, ALICE, HOST, TOPIC, "orders", [Op.READ, Op.WRITE])
    assert only == bits(Op.READ)
    assert authorized_operations(None, ALICE, HOST, GROUP, "g") == bits(
        *supported_operations(GROUP)
    )


# -- the index answers as a scan of every binding does --------------------------------

PRINCIPALS = ["User:alice", "User:bob", "User:*", "Group:alice"]
HOSTS = ["*", "10.0.0.1", "10.0.0.2"]
TYPES = [TOPIC, GROUP, CLUSTER]
NAMES = st.text(alphabet="abh*", max_size=4)
IMPLIES = {
    Op.DESCRIBE: {Op.READ, Op.WRITE, Op.DELETE, Op.ALTER},
    Op.DESCRIBE_CONFIGS: {Op.ALTER_CONFIGS},
}


def naive_authorize(
    bindings: list[AclBinding],
    super_users: frozenset[str],
    allow_everyone: bool,
    principal: str,
    host: str,
    operation: AclOperation,
    resource_type: ResourceType,
    name: str,
) -> bool:
    """Kafka's rules read straight off the docs, over every binding."""
    if principal in super_users:
        return True
    on_resource = [
        b
        for b in bindings
        if b.resource_type == resource_type
        and (
            (b.pattern_type == LITERAL and b.resource_name in (name, "*"))
            or (b.pattern_type == PREFIXED and name[: len(b.resource_name)] == b.resource_name)
        )
    ]
    if not on_resource:
        return allow_everyone

    def applies(b: AclBinding) -> bool:
        return b.principal in (principal, "User:*") and b.host in (host, "*")

    for b in on_resource:
        if applies(b) and b.permission_type == DENY and b.operation in (operation, Op.ALL):
            return False
    for b in on_resource:
        implied = IMPLIES.get(operation, set())
        if (
            applies(b)
            and b.permission_type == ALLOW
            and b.operation in {operation, Op.ALL, *implied}
        ):
            return True
    return False


bindings_strategy = st.lists(
    st.builds(
        AclBinding,
        st.sampled_from(TYPES),
        NAMES,
        st.sampled_from([LITERAL, PREFIXED]),
        st.sampled_from(PRINCIPALS),
        st.sampled_from(HOSTS),
        st.sampled_from(CONCRETE_OPS),
        st.sampled_from([ALLOW, DENY]),
    ),
    max_size=25,
)


@settings(max_examples=400, deadline=None)
@given(
    bindings=bindings_strategy,
    super_users=st.frozensets(st.sampled_from(PRINCIPALS), max_size=1),
    allow_everyone=st.booleans(),
    queries=st.lists(
        st.tuples(
            st.sampled_from(PRINCIPALS),
            st.sampled_from(HOSTS[1:]),
            st.sampled_from(CONCRETE_OPS),
            st.sampled_from(TYPES),
            NAMES,
        ),
        min_size=1,
        max_size=20,
    ),
)
def test_index_matches_naive_scan(
    bindings: list[AclBinding],
    super_users: frozenset[str],
    allow_everyone: bool,
    queries: list[tuple[str, str, AclOperation, ResourceType, str]],
) -> None:
    authorizer = Authorizer(bindings, super_users, allow_everyone)
    for principal, host, operation, resource_type, name in queries:
        want = naive_authorize(
            bindings, super_users, allow_everyone, principal, host, operation, resource_type, name
        )
        got = authorizer.authorize(principal, host, operation, resource_type, name)
        assert got is want, (principal, host, operation, resource_type, name)


def naive_authorize_any(
    bindings: list[AclBinding],
    super_users: frozenset[str],
    allow_everyone: bool,
    principal: str,
    host: str,
    operation: AclOperation,
    resource_type: ResourceType,
) -> bool:
    """Kafka's default Authorizer.authorizeByResourceType, line by line."""
    probe = naive_authorize(
        bindings, super_users, allow_everyone, principal, host, operation, resource_type, "hardcode"
    )
    if probe:
        return True
    deny: dict[PatternType, set[str]] = {LITERAL: set(), PREFIXED: set()}
    allow: dict[PatternType, set[str]] = {LITERAL: set(), PREFIXED: set()}
    wildcard_allow = False
    for b in bindings:
        if b.resource_type != resource_type:
            continue
        if b.host not in (host, "*") or b.principal not in (principal, "User:*"):
            continue
        if b.operation not in (operation, Op.ALL):
            continue
        if b.permission_type == DENY:
            if b.pattern_type == LITERAL and b.resource_name == "*":
                return False
            deny[b.pattern_type].add(b.resource_name)
        elif b.pattern_type == LITERAL and b.resource_name == "*":
            wildcard_allow = True
        else:
            allow[b.pattern_type].add(b.resource_name)
    if wildcard_allow:
        return True
    for pattern_type, names in allow.items():
        for name in names:
            if pattern_type == LITERAL and name in deny[LITERAL]:
                continue
            prefixes = {name[:end] for end in range(1, len(name) + 1)}
            if not prefixes & deny[PREFIXED]:
                return True
    return False


# Fewer values than above, so that ALLOWs and DENYs of one principal often meet.
dense_bindings_strategy = st.lists(
    st.builds(
        AclBinding,
        st.sampled_from([TOPIC, GROUP]),
        st.text(alphabet="ab*", max_size=3),
        st.sampled_from([LITERAL, PREFIXED]),
        st.sampled_from(PRINCIPALS[:3]),
        st.sampled_from(HOSTS[:2]),
        st.sampled_from([Op.READ, Op.WRITE, Op.ALL]),
        st.sampled_from([ALLOW, DENY]),
    ),
    max_size=12,
)


@settings(max_examples=500, deadline=None)
@given(
    bindings=dense_bindings_strategy,
    super_users=st.frozensets(st.sampled_from(PRINCIPALS), max_size=1),
    allow_everyone=st.booleans(),
    queries=st.lists(
        st.tuples(
            st.sampled_from(PRINCIPALS[:2]),
            st.sampled_from(HOSTS[1:]),
            st.sampled_from([Op.READ, Op.WRITE, Op.DESCRIBE]),
            st.sampled_from([TOPIC, GROUP]),
        ),
        min_size=1,
        max_size=10,
    ),
)
def test_authorize_any_matches_kafkas_scan(
    bindings: list[AclBinding],
    super_users: frozenset[str],
    allow_everyone: bool,
    queries: list[tuple[str, str, AclOperation, ResourceType]],
) -> None:
    authorizer = Authorizer(bindings, super_users, allow_everyone)
    for principal, host, operation, resource_type in queries:
        want = naive_authorize_any(
            bindings, super_users, allow_everyone, principal, host, operation, resource_type
        )
        got = authorizer.authorize_any(principal, host, operation, resource_type)
        assert got is want, (principal, host, operation, resource_type)
