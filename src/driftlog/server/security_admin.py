"""ACLs and SCRAM users through Kafka's admin APIs: CreateAcls, DescribeAcls,
DeleteAcls (v1-3), DescribeUserScramCredentials and AlterUserScramCredentials (v0).

Both live in the coordinator store; the agent that takes a change reloads at once,
the others within a heartbeat. Errors and their messages follow Kafka's AclApis and
ScramControlManager. Without `--authorizer acl` the ACL APIs answer SECURITY_DISABLED,
as a Kafka broker without an authorizer does.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable
from typing import Any

from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import AclBinding as StoredAcl
from driftlog.coordinator.api import CoordinatorError, ScramCredential
from driftlog.protocol.schema import build, response_module
from driftlog.security.acl import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    matches,
    validate_binding,
    validate_filter,
)
from driftlog.security.credentials import (
    MAX_ITERATIONS,
    MECHANISM_CODES,
    MECHANISM_NAMES,
    MIN_ITERATIONS,
    secret_from_salted,
)
from driftlog.server.context import RequestContext

DESCRIBE_ACLS, CREATE_ACLS, DELETE_ACLS = 29, 30, 31
DESCRIBE_SCRAM, ALTER_SCRAM = 50, 51
_NO_AUTHORIZER = "No Authorizer is configured."
_ZERO = datetime.timedelta(0)


def _stored(binding: AclBinding) -> StoredAcl:
    return StoredAcl(*binding.to_row())


# ACLs --------------------------------------------------------------------------------


async def handle_create_acls(ctx: RequestContext, request: Any) -> Any:
    module = response_module(CREATE_ACLS, ctx.api_version)

    def result(error: ErrorCode, message: str | None = None) -> Any:
        return build(module.AclCreationResult, error_code=error, error_message=message)

    if not ctx.access.enforced:
        failed = result(ErrorCode.security_disabled, _NO_AUTHORIZER)
        return build(
            module.CreateAclsResponse,
            throttle_time=_ZERO,
            results=(failed,) * len(request.creations),
        )
    if not ctx.access.allows_cluster(AclOperation.ALTER):
        denied = result(ErrorCode.cluster_authorization_failed)
        return build(
            module.CreateAclsResponse,
            throttle_time=_ZERO,
            results=(denied,) * len(request.creations),
        )
    results: list[Any] = []
    valid: list[AclBinding] = []
    for creation in request.creations:
        binding = AclBinding.from_row(
            (
                creation.resource_type,
                creation.resource_name,
                creation.resource_pattern_type,
                creation.principal,
                creation.host,
                creation.operation,
                creation.permission_type,
            )
        )
        refused = validate_binding(binding)
        if refused is not None:
            results.append(result(refused.code, refused.message))
        else:
            valid.append(binding)
            results.append(result(ErrorCode.none))
    if valid:
        try:
            await ctx.services.coordinator.backend.create_acls([_stored(b) for b in valid])
        except CoordinatorError as e:
            failed = result(ErrorCode.unknown_server_error, f"cannot store ACLs: {e}")
            results = [failed if r.error_code == ErrorCode.none else r for r in results]
        await ctx.services.refresh_security()
    return build(module.CreateAclsResponse, throttle_time=_ZERO, results=tuple(results))


def _filter(source: Any) -> AclBindingFilter:
    return AclBindingFilter.from_row(
        (
            source.resource_type_filter,
            source.resource_name_filter,
            source.pattern_type_filter,
            source.principal_filter,
            source.host_filter,
            source.operation,
            source.permission_type,
        )
    )


def _current_bindings(ctx: RequestContext) -> Iterable[AclBinding]:
    authorizer = ctx.access.authorizer
    return authorizer.bindings if authorizer is not None else ()


async def handle_describe_acls(ctx: RequestContext, request: Any) -> Any:
    module = response_module(DESCRIBE_ACLS, ctx.api_version)

    def failed(error: ErrorCode, message: str | None = None) -> Any:
        return build(
            module.DescribeAclsResponse,
            throttle_time=_ZERO,
            error_code=error,
            error_message=message,
            resources=(),
        )

    if not ctx.access.enforced:
        return failed(ErrorCode.security_disabled, _NO_AUTHORIZER)
    if not ctx.access.allows_cluster(AclOperation.DESCRIBE):
        return failed(ErrorCode.cluster_authorization_failed)
    acl_filter = _filter(request)
    refused = validate_filter(acl_filter)
    if refused is not None:
        return failed(refused.code, refused.message)
    by_resource: dict[tuple[int, str, int], list[Any]] = {}
    for binding in _current_bindings(ctx):
        if matches(acl_filter, binding):
            key = (int(binding.resource_type), binding.resource_name, int(binding.pattern_type))
            by_resource.setdefault(key, []).append(
                build(
                    module.AclDescription,
                    principal=binding.principal,
                    host=binding.host,
                    operation=int(binding.operation),
                    permission_type=int(binding.permission_type),
                )
            )
    resources = tuple(
        build(
            module.DescribeAclsResource,
            resource_type=resource_type,
            resource_name=name,
            pattern_type=pattern_type,
            acls=tuple(acls),
        )
        for (resource_type, name, pattern_type), acls in sorted(by_resource.items())
    )
    return build(
        module.DescribeAclsResponse,
        throttle_time=_ZERO,
        error_code=ErrorCode.none,
        error_message=None,
        resources=resources,
    )


async def handle_delete_acls(ctx: RequestContext, request: Any) -> Any:
    module = response_module(DELETE_ACLS, ctx.api_version)

    def failed(error: ErrorCode, message: str | None = None) -> Any:
        return build(
            module.DeleteAclsFilterResult, error_code=error, error_message=message, matching_acls=()
        )

    count = len(request.filters)
    if not ctx.access.enforced:
        results = (failed(ErrorCode.security_disabled, _NO_AUTHORIZER),) * count
        return build(module.DeleteAclsResponse, throttle_time=_ZERO, filter_results=results)
    if not ctx.access.allows_cluster(AclOperation.ALTER):
        results = (failed(ErrorCode.cluster_authorization_failed),) * count
        return build(module.DeleteAclsResponse, throttle_time=_ZERO, filter_results=results)
    current = list(_current_bindings(ctx))
    filter_results: list[Any] = []
    doomed: dict[AclBinding, None] = {}
    for source in request.filters:
        acl_filter = _filter(source)
        refused = validate_filter(acl_filter)
        if refused is not None:
            filter_results.append(failed(refused.code, refused.message))
            continue
        matched = [b for b in current if matches(acl_filter, b)]
        doomed.update(dict.fromkeys(matched))
        filter_results.append(
            build(
                module.DeleteAclsFilterResult,
                error_code=ErrorCode.none,
                error_message=None,
                matching_acls=tuple(
                    build(
                        module.DeleteAclsMatchingAcl,
                        error_code=ErrorCode.none,
                        error_message=None,
                        resource_type=int(b.resource_type),
                        resource_name=b.resource_name,
                        pattern_type=int(b.pattern_type),
                        principal=b.principal,
                        host=b.host,
                        operation=int(b.operation),
                        permission_type=int(b.permission_type),
                    )
                    for b in matched
                ),
            )
        )
    if doomed:
        try:
            await ctx.services.coordinator.backend.delete_acls([_stored(b) for b in doomed])
        except CoordinatorError as e:
            message = f"cannot delete ACLs: {e}"
            filter_results = [
                failed(ErrorCode.unknown_server_error, message)
                if r.error_code == ErrorCode.none
                else r
                for r in filter_results
            ]
        await ctx.services.refresh_security()
    return build(
        module.DeleteAclsResponse, throttle_time=_ZERO, filter_results=tuple(filter_results)
    )


# SCRAM users -------------------------------------------------------------------------


async def handle_describe_user_scram_credentials(ctx: RequestContext, request: Any) -> Any:
    module = response_module(DESCRIBE_SCRAM, ctx.api_version)
    if not ctx.access.allows_cluster(AclOperation.DESCRIBE):
        return build(
            module.DescribeUserScramCredentialsResponse,
            throttle_time=_ZERO,
            error_code=ErrorCode.cluster_authorization_failed,
            error_message="Cluster authorization failed.",
            results=(),
        )
    known = ctx.services.credentials.users()
    wanted = [u.name for u in request.users] if request.users else sorted(known)
    seen: dict[str, int] = {}
    for name in wanted:
        seen[name] = seen.get(name, 0) + 1
    results = []
    for name in dict.fromkeys(wanted):
        infos: tuple[Any, ...] = ()
        if seen[name] > 1:
            error = ErrorCode.duplicate_resource
            message: str | None = (
                "Cannot describe SCRAM credentials for the same user twice in a single "
                f"request: {name}"
            )
        elif name not in known:
            error = ErrorCode.resource_not_found
            message = f"Attempt to describe a user credential that does not exist: {name}"
        else:
            error, message = ErrorCode.none, None
            infos = tuple(
                build(
                    module.CredentialInfo,
                    mechanism=MECHANISM_CODES[s.mechanism],
                    iterations=s.iterations,
                )
                for s in sorted(known[name], key=lambda s: s.mechanism)
            )
        results.append(
            build(
                module.DescribeUserScramCredentialsResult,
                user=name,
                error_code=error,
                error_message=message,
                credential_infos=infos,
            )
        )
    return build(
        module.DescribeUserScramCredentialsResponse,
        throttle_time=_ZERO,
        error_code=ErrorCode.none,
        error_message=None,
        results=tuple(results),
    )


def _alteration_error(
    name: str, mechanism_code: int, iterations: int | None, salt: bytes | None, exists: bool
) -> tuple[ErrorCode, str] | None:
    """Kafka's checks of one deletion (iterations None) or upsertion."""
    if not name:
        return ErrorCode.unacceptable_credential, "Username must not be empty"
    if mechanism_code not in MECHANISM_NAMES:
        return ErrorCode.unsupported_sasl_mechanism, "Unknown SCRAM mechanism"
    if iterations is None:
        if not exists:
            return (
                ErrorCode.resource_not_found,
                "Attempt to delete a user credential that does not exist",
            )
        return None
    if iterations < MIN_ITERATIONS:
        return ErrorCode.unacceptable_credential, "Too few iterations"
    if iterations > MAX_ITERATIONS:
        return ErrorCode.unacceptable_credential, "Too many iterations"
    if not salt:
        return ErrorCode.unacceptable_credential, "Salt must not be empty"
    return None


async def handle_alter_user_scram_credentials(ctx: RequestContext, request: Any) -> Any:
    module = response_module(ALTER_SCRAM, ctx.api_version)
    users = list(
        dict.fromkeys([d.name for d in request.deletions] + [u.name for u in request.upsertions])
    )
    errors: dict[str, tuple[ErrorCode, str | None]] = {}
    if not ctx.access.allows_cluster(AclOperation.ALTER):
        errors = {name: (ErrorCode.cluster_authorization_failed, None) for name in users}
    else:
        credentials = ctx.services.credentials
        touched: dict[tuple[str, int], int] = {}
        for item in (*request.deletions, *request.upsertions):
            key = (item.name, item.mechanism)
            touched[key] = touched.get(key, 0) + 1
        deletions: list[tuple[str, str]] = []
        upserts: list[ScramCredential] = []
        for deletion in request.deletions:
            mechanism = MECHANISM_NAMES.get(deletion.mechanism, "")
            exists = credentials.lookup(deletion.name, mechanism) is not None
            error = _alteration_error(deletion.name, deletion.mechanism, None, None, exists)
            if error is None and touched[(deletion.name, deletion.mechanism)] > 1:
                error = (
                    ErrorCode.duplicate_resource,
                    "A user credential cannot be altered twice in the same request",
                )
            if error is not None:
                errors.setdefault(deletion.name, error)
            else:
                deletions.append((deletion.name, mechanism))
        for upsert in request.upsertions:
            error = _alteration_error(
                upsert.name, upsert.mechanism, upsert.iterations, upsert.salt, True
            )
            if error is None and touched[(upsert.name, upsert.mechanism)] > 1:
                error = (
                    ErrorCode.duplicate_resource,
                    "A user credential cannot be altered twice in the same request",
                )
            if error is not None:
                errors.setdefault(upsert.name, error)
            else:
                upserts.append(
                    secret_from_salted(
                        upsert.name,
                        MECHANISM_NAMES[upsert.mechanism],
                        bytes(upsert.salted_password),
                        bytes(upsert.salt),
                        upsert.iterations,
                    )
                )
        # A user with any refused alteration has none applied (Kafka answers per user).
        deletions = [d for d in deletions if d[0] not in errors]
        upserts = [u for u in upserts if u.user_name not in errors]
        if deletions or upserts:
            try:
                await ctx.services.coordinator.backend.put_scram_credentials(upserts, deletions)
            except CoordinatorError as e:
                for name in {d[0] for d in deletions} | {u.user_name for u in upserts}:
                    errors[name] = (ErrorCode.unknown_server_error, f"cannot store: {e}")
            await ctx.services.refresh_security()
    results = tuple(
        build(
            module.AlterUserScramCredentialsResult,
            user=name,
            error_code=errors.get(name, (ErrorCode.none, None))[0],
            error_message=errors.get(name, (ErrorCode.none, None))[1],
        )
        for name in users
    )
    return build(module.AlterUserScramCredentialsResponse, throttle_time=_ZERO, results=results)
