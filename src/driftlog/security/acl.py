"""Kafka's ACL authorizer as pure rules: bindings, filters, validation, decisions.

Owns the semantics of Kafka's StandardAuthorizer (KIP-11 ACLs, KIP-290 prefixed
patterns) so that ACLs copied from a Kafka cluster mean the same thing here:

- A binding grants or denies one principal ("Type:name", or "User:*" for everyone)
  from one host ("*" for any) one operation (ALL for every one) on a resource
  pattern: LITERAL (a name, or "*" for every name) or PREFIXED (every name that
  starts with it).
- Super users are allowed everything. Otherwise a DENY that applies wins over any
  ALLOW; an ALLOW of READ, WRITE, DELETE or ALTER also allows DESCRIBE, and of
  ALTER_CONFIGS also DESCRIBE_CONFIGS (DENY implies nothing). With no ACL at all on
  the resource the answer is `allow_everyone_if_no_acl_found`; with ACLs on it that
  do not apply to this principal, host and operation, the answer is no.
- `Authorizer.authorize_any` is Kafka's `Authorizer.authorizeByResourceType`: may
  the principal perform the operation on some resource of the type.

Does no I/O and keeps no state that can go stale: an `Authorizer` is an immutable
index of one set of bindings, and the server builds a new one whenever the ACLs
change. Which API needs which operation on which resource is the server's business.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Protocol, TypeVar

from kio.schema.errors import ErrorCode


class ResourceType(IntEnum):
    """Kafka's `ResourceType` codes."""

    UNKNOWN = 0
    ANY = 1
    TOPIC = 2
    GROUP = 3
    CLUSTER = 4
    TRANSACTIONAL_ID = 5
    DELEGATION_TOKEN = 6
    USER = 7


class PatternType(IntEnum):
    """Kafka's `PatternType` codes (KIP-290). ANY and MATCH exist only in filters."""

    UNKNOWN = 0
    ANY = 1
    MATCH = 2
    LITERAL = 3
    PREFIXED = 4


class AclOperation(IntEnum):
    """Kafka's `AclOperation` codes; also the bit positions of "authorized operations"."""

    UNKNOWN = 0
    ANY = 1
    ALL = 2
    READ = 3
    WRITE = 4
    CREATE = 5
    DELETE = 6
    ALTER = 7
    DESCRIBE = 8
    CLUSTER_ACTION = 9
    DESCRIBE_CONFIGS = 10
    ALTER_CONFIGS = 11
    IDEMPOTENT_WRITE = 12
    CREATE_TOKENS = 13
    DESCRIBE_TOKENS = 14


class AclPermissionType(IntEnum):
    """Kafka's `AclPermissionType` codes."""

    UNKNOWN = 0
    ANY = 1
    DENY = 2
    ALLOW = 3


WILDCARD_RESOURCE = "*"
WILDCARD_PRINCIPAL = "User:*"
WILDCARD_HOST = "*"
CLUSTER_NAME = "kafka-cluster"

# Resource types Kafka has but Driftlog does not (issue 14: no delegation tokens).
UNSUPPORTED_RESOURCE_TYPES = frozenset({ResourceType.DELEGATION_TOKEN, ResourceType.USER})

# StandardAuthorizerData.IMPLIES_DESCRIBE / IMPLIES_DESCRIBE_CONFIGS (ALLOW bindings only).
_IMPLIES_DESCRIBE = frozenset(
    {
        AclOperation.DESCRIBE,
        AclOperation.READ,
        AclOperation.WRITE,
        AclOperation.DELETE,
        AclOperation.ALTER,
    }
)
_IMPLIES_DESCRIBE_CONFIGS = frozenset({AclOperation.DESCRIBE_CONFIGS, AclOperation.ALTER_CONFIGS})

# Kafka's default authorizeByResourceType first authorizes this made-up literal name, so
# super users (and wildcard or matching prefixed ALLOWs, and the no-ACL default) pass.
_PROBE_RESOURCE_NAME = "hardcode"

_E = TypeVar("_E", ResourceType, PatternType, AclOperation, AclPermissionType)


def _from_code(enum: type[_E], code: int) -> _E:
    """Kafka's `fromCode`: a code it does not know is UNKNOWN, not an error."""
    try:
        return enum(code)
    except ValueError:
        return enum(0)


class StoredAcl(Protocol):
    """Any record with a binding's seven fields (the coordinator store's rows)."""

    @property
    def resource_type(self) -> int: ...
    @property
    def resource_name(self) -> str: ...
    @property
    def pattern_type(self) -> int: ...
    @property
    def principal(self) -> str: ...
    @property
    def host(self) -> str: ...
    @property
    def operation(self) -> int: ...
    @property
    def permission_type(self) -> int: ...


AclRow = tuple[int, str, int, str, str, int, int]


@dataclass(frozen=True, slots=True)
class AclBinding:
    """Kafka's `AclBinding`: a resource pattern plus an access control entry."""

    resource_type: ResourceType
    resource_name: str
    pattern_type: PatternType
    principal: str
    host: str
    operation: AclOperation
    permission_type: AclPermissionType

    @classmethod
    def from_row(cls, row: Sequence[int | str]) -> AclBinding:
        """From seven plain fields in declaration order; unknown codes become UNKNOWN."""
        resource_type, resource_name, pattern_type, principal, host, operation, permission = row
        return cls(
            _from_code(ResourceType, int(resource_type)),
            str(resource_name),
            _from_code(PatternType, int(pattern_type)),
            str(principal),
            str(host),
            _from_code(AclOperation, int(operation)),
            _from_code(AclPermissionType, int(permission)),
        )

    @classmethod
    def from_stored(cls, stored: StoredAcl) -> AclBinding:
        """From any record with the same seven attribute names."""
        return cls.from_row(
            (
                stored.resource_type,
                stored.resource_name,
                stored.pattern_type,
                stored.principal,
                stored.host,
                stored.operation,
                stored.permission_type,
            )
        )

    def to_row(self) -> AclRow:
        """The seven fields with plain ints, as the store keeps them."""
        return (
            int(self.resource_type),
            self.resource_name,
            int(self.pattern_type),
            self.principal,
            self.host,
            int(self.operation),
            int(self.permission_type),
        )


@dataclass(frozen=True, slots=True)
class AclBindingFilter:
    """Kafka's `AclBindingFilter` (DescribeAcls, DeleteAcls): None and ANY match anything."""

    resource_type: ResourceType = ResourceType.ANY
    resource_name: str | None = None
    pattern_type: PatternType = PatternType.ANY
    principal: str | None = None
    host: str | None = None
    operation: AclOperation = AclOperation.ANY
    permission_type: AclPermissionType = AclPermissionType.ANY

    @classmethod
    def from_row(cls, row: Sequence[int | str | None]) -> AclBindingFilter:
        """From seven fields in declaration order (names may be None); unknown codes
        become UNKNOWN, which `validate_filter` refuses."""
        resource_type, resource_name, pattern_type, principal, host, operation, permission = row
        return cls(
            _from_code(ResourceType, _int(resource_type)),
            None if resource_name is None else str(resource_name),
            _from_code(PatternType, _int(pattern_type)),
            None if principal is None else str(principal),
            None if host is None else str(host),
            _from_code(AclOperation, _int(operation)),
            _from_code(AclPermissionType, _int(permission)),
        )

    @classmethod
    def of(cls, binding: AclBinding) -> AclBindingFilter:
        """Kafka's `AclBinding.toFilter`: matches exactly that binding."""
        return cls(
            binding.resource_type,
            binding.resource_name,
            binding.pattern_type,
            binding.principal,
            binding.host,
            binding.operation,
            binding.permission_type,
        )


def _int(value: int | str | None) -> int:
    if value is None:
        raise TypeError("an ACL filter's codes cannot be null")
    return int(value)


def matches(acl_filter: AclBindingFilter, binding: AclBinding) -> bool:
    """Kafka's `AclBindingFilter.matches`: ResourcePatternFilter then AccessControlEntryFilter."""
    return _pattern_matches(acl_filter, binding) and _entry_matches(acl_filter, binding)


def _pattern_matches(acl_filter: AclBindingFilter, binding: AclBinding) -> bool:
    if acl_filter.resource_type not in (ResourceType.ANY, binding.resource_type):
        return False
    filter_pattern = acl_filter.pattern_type
    if filter_pattern not in (PatternType.ANY, PatternType.MATCH, binding.pattern_type):
        return False
    name = acl_filter.resource_name
    if name is None:
        return True
    # ANY (or the binding's own type) compares names; only MATCH looks through patterns.
    if filter_pattern in (PatternType.ANY, binding.pattern_type):
        return name == binding.resource_name
    if binding.pattern_type == PatternType.LITERAL:
        return name == binding.resource_name or binding.resource_name == WILDCARD_RESOURCE
    if binding.pattern_type == PatternType.PREFIXED:
        return name.startswith(binding.resource_name)
    return False  # Kafka throws here; a stored binding is never of another type


def _entry_matches(acl_filter: AclBindingFilter, binding: AclBinding) -> bool:
    if acl_filter.principal is not None and acl_filter.principal != binding.principal:
        return False
    if acl_filter.host is not None and acl_filter.host != binding.host:
        return False
    if acl_filter.operation not in (AclOperation.ANY, binding.operation):
        return False
    return acl_filter.permission_type in (AclPermissionType.ANY, binding.permission_type)


@dataclass(frozen=True, slots=True)
class AclError:
    """Why a binding or filter is refused, as Kafka puts it in the response."""

    code: ErrorCode
    message: str


def _invalid(message: str) -> AclError:
    return AclError(ErrorCode.invalid_request, message)


def validate_binding(binding: AclBinding) -> AclError | None:
    """CreateAcls' checks, in Kafka's order: AclApis.handleCreateAcls (cluster name,
    empty name), then AclControlManager.validateNewAcl (KAFKA-18051 adds the
    principal). All are INVALID_REQUEST. Kafka accepts DELEGATION_TOKEN and USER
    resources; Driftlog has no delegation tokens and refuses them the same way."""
    resource_type = binding.resource_type
    if resource_type == ResourceType.CLUSTER and binding.resource_name != CLUSTER_NAME:
        return _invalid(f"The only valid name for the CLUSTER resource is {CLUSTER_NAME}")
    if not binding.resource_name:
        return _invalid("Invalid empty resource name")
    if resource_type in (ResourceType.UNKNOWN, ResourceType.ANY):
        return _invalid(f"Invalid resourceType {resource_type.name}")
    if resource_type in UNSUPPORTED_RESOURCE_TYPES:
        return _invalid(f"Unsupported resourceType {resource_type.name}: Driftlog has no tokens")
    if binding.pattern_type not in (PatternType.LITERAL, PatternType.PREFIXED):
        return _invalid(f"Invalid patternType {binding.pattern_type.name}")
    if binding.operation in (AclOperation.UNKNOWN, AclOperation.ANY):
        return _invalid(f"Invalid operation {binding.operation.name}")
    if binding.permission_type not in (AclPermissionType.DENY, AclPermissionType.ALLOW):
        return _invalid(f"Invalid permissionType {binding.permission_type.name}")
    if ":" not in binding.principal:
        return _invalid(
            f"Could not parse principal from `{binding.principal}` (no colon is present "
            "separating the principal type from the principal name)"
        )
    return None


def validate_filter(acl_filter: AclBindingFilter) -> AclError | None:
    """AclControlManager.validateFilter (DeleteAcls): UNKNOWN fields are refused."""
    if (
        acl_filter.resource_type == ResourceType.UNKNOWN
        or acl_filter.pattern_type == PatternType.UNKNOWN
    ):
        return _invalid("Unknown patternFilter.")
    if (
        acl_filter.operation == AclOperation.UNKNOWN
        or acl_filter.permission_type == AclPermissionType.UNKNOWN
    ):
        return _invalid("Unknown entryFilter.")
    return None


def parse_super_users(value: str) -> frozenset[str]:
    """Kafka's `super.users`: principals separated by ';', blanks ignored, each
    "Type:name" (StandardAuthorizer.getConfiguredSuperUsers)."""
    users: set[str] = set()
    for part in value.split(";"):
        principal = part.strip()
        if not principal:
            continue
        if ":" not in principal:
            raise ValueError(
                "expected a string in format principalType:principalName but got " + principal
            )
        users.add(principal)
    return frozenset(users)


_SUPPORTED_OPERATIONS: dict[ResourceType, frozenset[AclOperation]] = {
    ResourceType.TOPIC: frozenset(
        {
            AclOperation.READ,
            AclOperation.WRITE,
            AclOperation.CREATE,
            AclOperation.DESCRIBE,
            AclOperation.DELETE,
            AclOperation.ALTER,
            AclOperation.DESCRIBE_CONFIGS,
            AclOperation.ALTER_CONFIGS,
        }
    ),
    ResourceType.GROUP: frozenset(
        {
            AclOperation.READ,
            AclOperation.DESCRIBE,
            AclOperation.DELETE,
            AclOperation.DESCRIBE_CONFIGS,
            AclOperation.ALTER_CONFIGS,
        }
    ),
    ResourceType.CLUSTER: frozenset(
        {
            AclOperation.CREATE,
            AclOperation.CLUSTER_ACTION,
            AclOperation.DESCRIBE_CONFIGS,
            AclOperation.ALTER_CONFIGS,
            AclOperation.IDEMPOTENT_WRITE,
            AclOperation.ALTER,
            AclOperation.DESCRIBE,
        }
    ),
    ResourceType.TRANSACTIONAL_ID: frozenset({AclOperation.DESCRIBE, AclOperation.WRITE}),
    ResourceType.DELEGATION_TOKEN: frozenset({AclOperation.DESCRIBE}),
    ResourceType.USER: frozenset({AclOperation.CREATE_TOKENS, AclOperation.DESCRIBE_TOKENS}),
}


def supported_operations(resource_type: ResourceType) -> frozenset[AclOperation]:
    """Kafka's `AclEntry.supportedOperations`: what "authorized operations" reports on."""
    try:
        return _SUPPORTED_OPERATIONS[resource_type]
    except KeyError:
        raise ValueError(f"Not a concrete resource type: {resource_type.name}") from None


def binding_applies(
    binding: AclBinding, principal: str, host: str, operation: AclOperation
) -> AclPermissionType | None:
    """StandardAuthorizerData.findResult: ALLOW or DENY if the binding applies to this
    principal, host and operation (its resource is assumed to match), else None."""
    if binding.principal != principal and binding.principal != WILDCARD_PRINCIPAL:
        return None
    if binding.host != WILDCARD_HOST and binding.host != host:
        return None
    acl_operation = binding.operation
    if acl_operation != AclOperation.ALL:
        if binding.permission_type == AclPermissionType.ALLOW:
            if operation == AclOperation.DESCRIBE:
                if acl_operation not in _IMPLIES_DESCRIBE:
                    return None
            elif operation == AclOperation.DESCRIBE_CONFIGS:
                if acl_operation not in _IMPLIES_DESCRIBE_CONFIGS:
                    return None
            elif operation != acl_operation:
                return None
        elif operation != acl_operation:
            return None
    # Kafka: anything but ALLOW denies (validation keeps other values out anyway).
    if binding.permission_type == AclPermissionType.ALLOW:
        return AclPermissionType.ALLOW
    return AclPermissionType.DENY


def resource_matches(binding: AclBinding, resource_type: ResourceType, name: str) -> bool:
    """Whether the binding's pattern covers the literal resource (type, name)."""
    if binding.resource_type != resource_type:
        return False
    if binding.pattern_type == PatternType.LITERAL:
        return binding.resource_name in (name, WILDCARD_RESOURCE)
    if binding.pattern_type == PatternType.PREFIXED:
        return name.startswith(binding.resource_name)
    return False


_Key = tuple[ResourceType, str]


class Authorizer:
    """One set of bindings indexed for lookup, plus the authorizer's configuration.

    Literal bindings (the "*" wildcard included) sit in a dict by (type, name);
    prefixed ones in a dict by (type, prefix) together with the distinct prefix
    lengths of each type, so a lookup is a handful of dict probes however many
    bindings there are. `authorize_any` reads the bindings of (type, principal).
    """

    __slots__ = (
        "_allow_if_no_acl",
        "_bindings",
        "_by_principal",
        "_literal",
        "_prefix_lengths",
        "_prefixed",
        "_super_users",
    )

    def __init__(
        self,
        bindings: Iterable[AclBinding] = (),
        super_users: frozenset[str] = frozenset(),
        allow_everyone_if_no_acl_found: bool = False,
    ) -> None:
        self._bindings = tuple(bindings)
        self._super_users = super_users
        self._allow_if_no_acl = allow_everyone_if_no_acl_found
        literal: dict[_Key, list[AclBinding]] = {}
        prefixed: dict[_Key, list[AclBinding]] = {}
        prefix_lengths: dict[ResourceType, set[int]] = {}
        by_principal: dict[_Key, list[AclBinding]] = {}
        for binding in self._bindings:
            key = (binding.resource_type, binding.resource_name)
            if binding.pattern_type == PatternType.LITERAL:
                literal.setdefault(key, []).append(binding)
            elif binding.pattern_type == PatternType.PREFIXED:
                prefixed.setdefault(key, []).append(binding)
                lengths = prefix_lengths.setdefault(binding.resource_type, set())
                lengths.add(len(binding.resource_name))
            else:
                continue  # never stored (validate_binding); Kafka could not hold it either
            by_principal.setdefault((binding.resource_type, binding.principal), []).append(binding)
        self._literal = {key: tuple(found) for key, found in literal.items()}
        self._prefixed = {key: tuple(found) for key, found in prefixed.items()}
        self._prefix_lengths = {
            resource_type: tuple(sorted(lengths))
            for resource_type, lengths in prefix_lengths.items()
        }
        self._by_principal = {key: tuple(found) for key, found in by_principal.items()}

    @property
    def bindings(self) -> tuple[AclBinding, ...]:
        return self._bindings

    @property
    def super_users(self) -> frozenset[str]:
        return self._super_users

    @property
    def allow_everyone_if_no_acl_found(self) -> bool:
        return self._allow_if_no_acl

    def _bindings_on(self, resource_type: ResourceType, name: str) -> Iterator[AclBinding]:
        """Every binding whose pattern covers the literal resource (type, name)."""
        yield from self._literal.get((resource_type, name), ())
        if name != WILDCARD_RESOURCE:
            yield from self._literal.get((resource_type, WILDCARD_RESOURCE), ())
        for length in self._prefix_lengths.get(resource_type, ()):
            if length > len(name):
                break
            yield from self._prefixed.get((resource_type, name[:length]), ())

    def _of_principal(self, resource_type: ResourceType, principal: str) -> Iterator[AclBinding]:
        """The bindings of the type that name this principal or every principal."""
        yield from self._by_principal.get((resource_type, principal), ())
        if principal != WILDCARD_PRINCIPAL:
            yield from self._by_principal.get((resource_type, WILDCARD_PRINCIPAL), ())

    def authorize(
        self,
        principal: str,
        host: str,
        operation: AclOperation,
        resource_type: ResourceType,
        resource_name: str,
    ) -> bool:
        """StandardAuthorizerData.authorize on a literal resource. `principal` is
        "Type:name" (e.g. "User:alice"); `host` the client's IP address as text."""
        if principal in self._super_users:
            return True
        has_resource_acls = False
        allowed = False
        for binding in self._bindings_on(resource_type, resource_name):
            has_resource_acls = True
            verdict = binding_applies(binding, principal, host, operation)
            if verdict == AclPermissionType.DENY:
                return False
            if verdict == AclPermissionType.ALLOW:
                allowed = True
        if allowed:
            return True
        # ACLs on the resource that do not apply deny; only none at all falls to the default.
        return self._allow_if_no_acl and not has_resource_acls

    def authorize_any(
        self,
        principal: str,
        host: str,
        operation: AclOperation,
        resource_type: ResourceType,
    ) -> bool:
        """Kafka's default `Authorizer.authorizeByResourceType`: allowed when an ALLOW
        binding of the type (exact operation or ALL, no implied operations) applies and
        no DENY dominates it: a wildcard DENY dominates everything, a literal DENY its
        own name, a prefixed DENY every name and prefix that starts with it. Before
        that, as Kafka does, the made-up resource name "hardcode" is authorized: super users,
        the no-ACL default and ALLOWs that cover that name (implied ones too) pass."""
        if resource_type in (ResourceType.ANY, ResourceType.UNKNOWN):
            raise ValueError(f"authorize_any needs a concrete resource type: {resource_type!r}")
        if operation in (AclOperation.ANY, AclOperation.UNKNOWN):
            raise ValueError(f"authorize_any needs a concrete operation: {operation!r}")
        if self.authorize(principal, host, operation, resource_type, _PROBE_RESOURCE_NAME):
            return True
        deny_literal: set[str] = set()
        deny_prefixed: set[str] = set()
        allow_literal: set[str] = set()
        allow_prefixed: set[str] = set()
        wildcard_allow = False
        for binding in self._of_principal(resource_type, principal):
            if binding.host != host and binding.host != WILDCARD_HOST:
                continue
            if binding.operation != operation and binding.operation != AclOperation.ALL:
                continue
            name = binding.resource_name
            literal = binding.pattern_type == PatternType.LITERAL
            if binding.permission_type == AclPermissionType.DENY:
                if literal and name == WILDCARD_RESOURCE:
                    return False
                (deny_literal if literal else deny_prefixed).add(name)
            elif binding.permission_type == AclPermissionType.ALLOW:
                if literal and name == WILDCARD_RESOURCE:
                    wildcard_allow = True
                else:
                    (allow_literal if literal else allow_prefixed).add(name)
        if wildcard_allow:
            return True

        def dominated(name: str) -> bool:
            # Kafka checks the prefixes of length 1 and up: an empty prefix never dominates.
            return any(name[:end] in deny_prefixed for end in range(1, len(name) + 1))

        if any(name not in deny_literal and not dominated(name) for name in allow_literal):
            return True
        return any(not dominated(name) for name in allow_prefixed)


def authorized_operations(
    authorizer: Authorizer | None,
    principal: str,
    host: str,
    resource_type: ResourceType,
    name: str,
    candidates: Iterable[AclOperation] | None = None,
) -> int:
    """The "authorized operations" bit field of Metadata, DescribeCluster and
    DescribeGroups (KIP-430): bit `op` set for each candidate the principal may do.
    Candidates default to Kafka's supported operations of the type; with no
    authorizer every candidate is allowed (AuthHelper.authorizedOperations)."""
    operations = supported_operations(resource_type) if candidates is None else candidates
    bits = 0
    for operation in operations:
        allowed = authorizer is None or authorizer.authorize(
            principal, host, operation, resource_type, name
        )
        if allowed:
            bits |= 1 << int(operation)
    return bits
