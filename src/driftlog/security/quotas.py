"""Client byte-rate quotas as Kafka enforces them (KIP-13, KIP-55, KIP-257, KIP-546).

Owns: which configured quota applies to a (user principal name, client id) pair, the
rate each quota bucket has used, the throttle time a recording earns, and the checks
AlterClientQuotas and DescribeClientQuotas make of their input. No I/O and no clock:
time comes in as `now_ms`; the server mutes the connection and writes
`throttle_time_ms`, the coordinator stores the entries.

Kafka's rules, from ClientQuotaManager, Rate, SampledStat and QuotaUtils:
- Precedence (most specific first): /users/<user>/clients/<client-id>,
  /users/<user>/clients/<default>, /users/<user>, /users/<default>/clients/<client-id>,
  /users/<default>/clients/<default>, /users/<default>, /clients/<client-id>,
  /clients/<default>. Each kind (produce, fetch) resolves on its own key.
- A bucket is keyed by the parts of the matched entity's shape filled with the client's
  own names (Kafka's metric tags): a /users/<default> quota gives each user one bucket
  shared by all of that user's clients; /users/<user>/clients/<default> gives each of
  that user's client ids its own bucket.
- The rate is Kafka's: `window_count` samples of `window_size_ms`; the sum over live
  samples divided by the elapsed time since the oldest, counted as at least
  `window_count - 1` whole windows. A recording over the quota earns
  (rate - quota) / quota * window, the delay that brings the rate back to the quota.

Deviations, on purpose: Kafka keys buckets by strings where "" means "not in the key",
so a client with an empty client id escapes client-id quotas; here an empty id is an id
like any other. Kafka records traffic of clients with no quota; here they have no
bucket. Kafka's throttle is not capped for byte rates (only `Long.toInt`); here it is
capped at `throttle_ms_max` (default the int32 maximum, what the wire field holds).
IP entities (connection-rate quotas) are out of scope: AlterClientQuotas refuses them
and a describe filter on them matches nothing.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from kio.schema.errors import ErrorCode

QuotaKind = Literal["produce", "fetch"]

PRODUCER_BYTE_RATE = "producer_byte_rate"
CONSUMER_BYTE_RATE = "consumer_byte_rate"
QUOTA_KEY_BY_KIND: Mapping[QuotaKind, str] = {
    "produce": PRODUCER_BYTE_RATE,
    "fetch": CONSUMER_BYTE_RATE,
}
# Keys Kafka accepts for user and client-id entities that Driftlog does not enforce:
# refused rather than stored, so an operator is never told a limit holds that doesn't.
UNENFORCED_QUOTA_KEYS = frozenset({"request_percentage", "controller_mutation_rate"})

ENTITY_USER = "user"
ENTITY_CLIENT_ID = "client-id"
ENTITY_IP = "ip"

# The user name of a client that authenticated as nobody (KafkaPrincipal.ANONYMOUS).
ANONYMOUS_USER = "ANONYMOUS"

# quota.window.size.seconds and quota.window.num defaults; the sensor expiry of
# ClientQuotaManager.InactiveSensorExpirationTimeSeconds.
WINDOW_SIZE_MS_DEFAULT = 1_000
WINDOW_COUNT_DEFAULT = 11
IDLE_EXPIRY_MS_DEFAULT = 3_600_000
BUCKET_COUNT_MAX_DEFAULT = 100_000
INT32_MAX = 2**31 - 1
# Java's (double) Long.MAX_VALUE, the largest value a LONG quota key takes.
_LONG_MAX_AS_DOUBLE = float(2**63 - 1)

# (entity type, name or None for that type's default entity), sorted by type; the
# coordinator store's shape.
QuotaEntity = tuple[tuple[str, str | None], ...]


class QuotaEntryLike(Protocol):
    """What a stored quota entry gives: the coordinator's `QuotaEntry` fits."""

    @property
    def entity(self) -> QuotaEntity: ...

    @property
    def values(self) -> Mapping[str, float]: ...


@dataclass(frozen=True, slots=True)
class QuotaEntry:
    entity: QuotaEntity
    values: Mapping[str, float]


class _Absent:
    """Marks an entity type that is not part of an entity (as opposed to its default)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()
# One part of an entity: a name, None for the default entity, or ABSENT.
EntityPart = str | None | _Absent


def quota_entity(user: EntityPart, client_id: EntityPart) -> QuotaEntity:
    """The stored entity for a user part and a client-id part (None: the default
    entity, ABSENT: not part of the entity)."""
    pairs: list[tuple[str, str | None]] = []
    if not isinstance(client_id, _Absent):
        pairs.append((ENTITY_CLIENT_ID, client_id))
    if not isinstance(user, _Absent):
        pairs.append((ENTITY_USER, user))
    return tuple(pairs)


def kafka_sanitize(name: str) -> str:
    """Kafka's Sanitizer.sanitize: URL-encoding (Java's URLEncoder, UTF-8) with `*` and
    space percent-encoded. Kafka tags quota metrics with the sanitized user name. It is
    one-to-one, so matching sanitized names is matching names."""
    out: list[str] = []
    for byte in name.encode("utf-8"):
        char = chr(byte)
        if byte < 0x80 and (char.isalnum() or char in ".-_"):
            out.append(char)
        else:
            out.append(f"%{byte:02X}")
    return "".join(out)


# --- Resolution --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuotaBucketKey:
    """Whose usage one bucket counts: the client's user name and/or client id, as far
    as the matched entity has a user part and a client-id part (None: not a part)."""

    user: str | None
    client_id: str | None

    def metric_tags(self) -> dict[str, str]:
        """Kafka's quota metric tags for this bucket ("" for a part not in the key)."""
        return {
            "user": "" if self.user is None else kafka_sanitize(self.user),
            "client-id": "" if self.client_id is None else self.client_id,
        }


@dataclass(frozen=True, slots=True)
class ResolvedQuota:
    bucket: QuotaBucketKey
    entity: QuotaEntity  # the configured entity that won
    bytes_per_s: float


class QuotaResolver:
    """The configured byte-rate quotas, by kind, and Kafka's precedence over them."""

    def __init__(self, entries: Iterable[QuotaEntryLike] = ()) -> None:
        self._by_kind: dict[QuotaKind, dict[QuotaEntity, float]] = {"produce": {}, "fetch": {}}
        for entry in entries:
            entity = _user_client_entity(entry.entity)
            if entity is None:
                continue  # ip or malformed entities: not a user/client-id quota
            for kind, key in QUOTA_KEY_BY_KIND.items():
                value = entry.values.get(key)
                if value is not None and value > 0:
                    self._by_kind[kind][entity] = float(value)

    def enabled(self, kind: QuotaKind) -> bool:
        return bool(self._by_kind[kind])

    def quota_for(self, kind: QuotaKind, user: str, client_id: str) -> ResolvedQuota | None:
        """The quota of `kind` for this user principal name and client id, or None."""
        configured = self._by_kind[kind]
        if not configured:
            return None
        for user_part, client_part, bucket_user, bucket_client in (
            (user, client_id, True, True),  # /users/<user>/clients/<client-id>
            (user, None, True, True),  # /users/<user>/clients/<default>
            (user, ABSENT, True, False),  # /users/<user>
            (None, client_id, True, True),  # /users/<default>/clients/<client-id>
            (None, None, True, True),  # /users/<default>/clients/<default>
            (None, ABSENT, True, False),  # /users/<default>
            (ABSENT, client_id, False, True),  # /clients/<client-id>
            (ABSENT, None, False, True),  # /clients/<default>
        ):
            entity = quota_entity(user_part, client_part)
            value = configured.get(entity)
            if value is not None:
                bucket = QuotaBucketKey(
                    user if bucket_user else None, client_id if bucket_client else None
                )
                return ResolvedQuota(bucket, entity, value)
        return None


def _user_client_entity(entity: QuotaEntity) -> QuotaEntity | None:
    types = [entity_type for entity_type, _ in entity]
    if not types or len(set(types)) != len(types):
        return None
    if not set(types) <= {ENTITY_USER, ENTITY_CLIENT_ID}:
        return None
    return tuple(sorted(entity, key=lambda pair: pair[0]))


# --- Rate and throttle -------------------------------------------------------------


@dataclass(slots=True)
class _Sample:
    start_ms: int
    last_event_ms: int
    value: float = 0.0

    def reset(self, now_ms: int) -> None:
        self.start_ms = now_ms
        self.last_event_ms = now_ms
        self.value = 0.0


class WindowedRate:
    """Kafka's Rate over a WindowedSum (SampledStat with `window_count` samples of
    `window_size_ms`, plus the one extra slot Kafka keeps for a sample overlapping the
    window's start)."""

    __slots__ = ("_current", "_samples", "window_count", "window_size_ms")

    def __init__(self, window_size_ms: int, window_count: int) -> None:
        self.window_size_ms = window_size_ms
        self.window_count = window_count
        self._samples: list[_Sample] = []
        self._current = 0

    def record(self, value: float, now_ms: int) -> None:
        sample = self._current_sample(now_ms)
        if now_ms - sample.start_ms >= self.window_size_ms:
            sample = self._advance(now_ms)
        sample.value += value
        sample.last_event_ms = now_ms

    def measure(self, now_ms: int) -> float:
        """Units recorded per second over the window."""
        self._purge(now_ms)
        total = sum(sample.value for sample in self._samples)
        return total / (self.window_size(now_ms) / 1000.0)

    def window_size(self, now_ms: int) -> int:
        """Rate.windowSize: time since the oldest live sample began, counted as at least
        `window_count - 1` whole windows (so a young bucket's rate isn't inflated) and
        at least 1 ms."""
        self._purge(now_ms)
        elapsed_ms = now_ms - self._oldest(now_ms).start_ms
        full_windows = _java_div(elapsed_ms, self.window_size_ms)
        full_windows_min = self.window_count - 1
        if full_windows < full_windows_min:
            elapsed_ms += (full_windows_min - full_windows) * self.window_size_ms
        return max(elapsed_ms, 1)

    def _current_sample(self, now_ms: int) -> _Sample:
        if not self._samples:
            self._samples.append(_Sample(now_ms, now_ms))
        return self._samples[self._current]

    def _advance(self, now_ms: int) -> _Sample:
        self._current = (self._current + 1) % (self.window_count + 1)
        if self._current >= len(self._samples):
            sample = _Sample(now_ms, now_ms)
            self._samples.append(sample)
            return sample
        sample = self._samples[self._current]
        sample.reset(now_ms)
        return sample

    def _oldest(self, now_ms: int) -> _Sample:
        if not self._samples:
            self._samples.append(_Sample(now_ms, now_ms))
        return min(self._samples, key=lambda sample: sample.start_ms)

    def _purge(self, now_ms: int) -> None:
        # A sample with no event in the whole monitored span restarts at now; one that
        # overlaps the span's start is kept (SampledStat.purgeObsoleteSamples).
        expire_age_ms = self.window_count * self.window_size_ms
        for sample in self._samples:
            if now_ms - sample.last_event_ms >= expire_age_ms:
                sample.reset(now_ms)


def _java_div(numerator: int, denominator: int) -> int:
    """Java's long division (truncates toward zero) for a clock that stepped back."""
    quotient = abs(numerator) // denominator
    return quotient if numerator >= 0 else -quotient


def throttle_ms(rate_per_s: float, quota_per_s: float, window_size_ms: int) -> int:
    """QuotaUtils.throttleTime: the delay X that brings rate O to quota T over window W,
    O * W / (W + X) = T, so X = (O - T) / T * W, rounded as Java's Math.round; 0 when
    the rate is within the quota (Quota.acceptable: value <= bound)."""
    if rate_per_s <= quota_per_s:
        return 0
    return math.floor((rate_per_s - quota_per_s) / quota_per_s * window_size_ms + 0.5)


# --- Buckets -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuotaSettings:
    window_size_ms: int = WINDOW_SIZE_MS_DEFAULT  # quota.window.size.seconds
    window_count: int = WINDOW_COUNT_DEFAULT  # quota.window.num
    idle_expiry_ms: int = IDLE_EXPIRY_MS_DEFAULT
    bucket_count_max: int = BUCKET_COUNT_MAX_DEFAULT
    throttle_ms_max: int = INT32_MAX

    def __post_init__(self) -> None:
        if self.window_size_ms < 1 or self.window_count < 1:
            raise ValueError("quota windows need a size and a count of at least 1")
        if self.idle_expiry_ms < 0 or self.bucket_count_max < 1 or self.throttle_ms_max < 0:
            raise ValueError(f"invalid quota settings: {self!r}")


@dataclass(slots=True)
class _Bucket:
    rate: WindowedRate
    last_record_ms: int


class QuotaManager:
    """Usage per quota bucket, for both kinds, and the throttle each recording earns.

    Buckets idle longer than `idle_expiry_ms` are forgotten, and at most
    `bucket_count_max` are kept (the least recently used goes first), so memory is
    bounded whatever the clients send.
    """

    def __init__(
        self, entries: Iterable[QuotaEntryLike] = (), settings: QuotaSettings | None = None
    ) -> None:
        self.settings = settings or QuotaSettings()
        self.resolver = QuotaResolver(entries)
        # Least recently recorded first, so expiry and eviction pop from the front.
        self._buckets: OrderedDict[tuple[QuotaKind, QuotaBucketKey], _Bucket] = OrderedDict()

    def update(self, entries: Iterable[QuotaEntryLike]) -> None:
        """New configuration. A bucket whose key the new entries still resolve to keeps
        its measured rate (Kafka changes the sensor's bound, not its samples)."""
        self.resolver = QuotaResolver(entries)

    def record(self, kind: QuotaKind, user: str, client_id: str, nbytes: float, now_ms: int) -> int:
        """Count `nbytes` for this client at `now_ms`; the throttle time in ms Kafka
        would answer (0 within quota, or when no quota applies). The bytes count even
        when throttled, as in Kafka (a throttled fetch calls `unrecord`)."""
        resolved = self.resolver.quota_for(kind, user, client_id)
        if resolved is None:
            return 0
        self.expire(now_ms)
        bucket = self._bucket(kind, resolved.bucket, now_ms)
        bucket.rate.record(nbytes, now_ms)
        rate_per_s = bucket.rate.measure(now_ms)
        if rate_per_s <= resolved.bytes_per_s:
            return 0
        delay_ms = throttle_ms(rate_per_s, resolved.bytes_per_s, bucket.rate.window_size(now_ms))
        return min(delay_ms, self.settings.throttle_ms_max)

    def unrecord(
        self, kind: QuotaKind, user: str, client_id: str, nbytes: float, now_ms: int
    ) -> None:
        """Take back bytes recorded by `record` (Kafka's unrecordQuotaSensor: a
        throttled fetch answers empty, so its bytes were never sent)."""
        resolved = self.resolver.quota_for(kind, user, client_id)
        if resolved is None:
            return
        bucket = self._buckets.get((kind, resolved.bucket))
        if bucket is not None:
            bucket.rate.record(-nbytes, now_ms)

    def max_bytes_in_window(self, kind: QuotaKind, user: str, client_id: str) -> float | None:
        """getMaxValueInQuotaWindow: the most one response can hold without being
        throttled for certain (Kafka caps a fetch's size with it); None: no quota."""
        resolved = self.resolver.quota_for(kind, user, client_id)
        if resolved is None:
            return None
        window_s = self.settings.window_size_ms / 1000.0
        return resolved.bytes_per_s * (self.settings.window_count - 1) * window_s

    def rate(self, kind: QuotaKind, bucket: QuotaBucketKey, now_ms: int) -> float | None:
        """The measured bytes per second of a bucket, None if it has none (for metrics)."""
        found = self._buckets.get((kind, bucket))
        return None if found is None else found.rate.measure(now_ms)

    def expire(self, now_ms: int) -> int:
        """Forget buckets idle for more than `idle_expiry_ms` (Sensor.hasExpired);
        how many went."""
        expired = 0
        while self._buckets:
            key, bucket = next(iter(self._buckets.items()))
            if now_ms - bucket.last_record_ms <= self.settings.idle_expiry_ms:
                break
            del self._buckets[key]
            expired += 1
        return expired

    @property
    def bucket_count(self) -> int:
        return len(self._buckets)

    def _bucket(self, kind: QuotaKind, key: QuotaBucketKey, now_ms: int) -> _Bucket:
        found = self._buckets.get((kind, key))
        if found is None:
            while len(self._buckets) >= self.settings.bucket_count_max:
                self._buckets.popitem(last=False)
            found = _Bucket(
                WindowedRate(self.settings.window_size_ms, self.settings.window_count), now_ms
            )
            self._buckets[(kind, key)] = found
        else:
            self._buckets.move_to_end((kind, key))
            # A clock that stepped back must not make the bucket look older than it is.
            found.last_record_ms = max(found.last_record_ms, now_ms)
        return found


# --- AlterClientQuotas -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class QuotaRefusal:
    """A Kafka error for a request entry (Alter) or for the whole request (Describe)."""

    error_code: ErrorCode
    message: str


@dataclass(frozen=True, slots=True)
class QuotaAlteration:
    """A valid alteration: set each key to its value, or remove it (None)."""

    entity: QuotaEntity
    changes: tuple[tuple[str, float | None], ...]


def _invalid(message: str) -> QuotaRefusal:
    return QuotaRefusal(ErrorCode.invalid_request, message)


def _describe_entity(entity: Sequence[tuple[str, str | None]]) -> str:
    parts = [
        f"{entity_type}={'<default>' if name is None else name}" for entity_type, name in entity
    ]
    return "{" + ", ".join(parts) + "}"


def check_alteration(
    entity: Sequence[tuple[str, str | None]], ops: Sequence[tuple[str, float | None]]
) -> QuotaAlteration | QuotaRefusal:
    """One AlterClientQuotas entry checked as Kafka's ClientQuotaControlManager does:
    entity types, names, keys and values. `ops` are (key, value), None to remove."""
    if not entity:
        return _invalid("Invalid empty client quota entity")
    seen_types: set[str] = set()
    for entity_type, name in entity:
        if entity_type in seen_types:
            # Kafka's wire decoding keeps the last; refusing says what went wrong.
            return _invalid(f"Invalid client quota entity, duplicate entity entry {entity_type}")
        seen_types.add(entity_type)
        if entity_type == ENTITY_IP:
            return _invalid("Quotas on ip entities (connection rates) are not supported")
        if entity_type not in (ENTITY_USER, ENTITY_CLIENT_ID):
            return _invalid(f"Unhandled client quota entity type: {entity_type}")
        if name is not None and name == "":
            return _invalid(f"Empty {entity_type} not supported")
    normalized: QuotaEntity = tuple(sorted(entity, key=lambda pair: pair[0]))

    changes: dict[str, float | None] = {}
    for key, value in ops:
        if key in changes:
            return _invalid(
                f"Duplicate quota key {key} not updating quota for this entity "
                f"{_describe_entity(normalized)}"
            )
        changes[key] = value
        if value is None:
            continue  # removing any key is fine, as in Kafka (a no-op when unset)
        refusal = _check_quota_value(key, value)
        if refusal is not None:
            return refusal
    return QuotaAlteration(normalized, tuple(changes.items()))


def _check_quota_value(key: str, value: float) -> QuotaRefusal | None:
    """validateQuotaKeyValue for the LONG byte-rate keys."""
    if key in UNENFORCED_QUOTA_KEYS:
        return _invalid(f"Quota {key} is not supported by Driftlog")
    if key not in QUOTA_KEY_BY_KIND.values():
        return _invalid(f"Invalid configuration key {key}")
    if math.isnan(value):
        # Kafka's checks all pass NaN; a rate nobody can compare against is refused.
        return _invalid(f"Quota {key} must be a number")
    if value <= 0.0:
        return _invalid(f"Quota {key} must be greater than 0")
    if value > _LONG_MAX_AS_DOUBLE:
        return _invalid(f"Proposed value for {key} is too large for a LONG.")
    if abs(math.fmod(value, 1.0)) > 1e-6:
        return _invalid(f"{key} cannot be a fractional value.")
    return None


def check_alterations(
    entries: Sequence[tuple[Sequence[tuple[str, str | None]], Sequence[tuple[str, float | None]]]],
) -> list[QuotaAlteration | QuotaRefusal]:
    """A whole AlterClientQuotas request, one result per entry in order. An entity that
    appears again in the same request is refused there ("Ignoring duplicate entity"),
    the first occurrence applies (ClientQuotaControlManager.alterClientQuotas)."""
    results: list[QuotaAlteration | QuotaRefusal] = []
    seen: set[QuotaEntity] = set()
    for entity, ops in entries:
        normalized: QuotaEntity = tuple(sorted(entity, key=lambda pair: pair[0]))
        if normalized in seen:
            results.append(_invalid(f"Ignoring duplicate entity {_describe_entity(normalized)}"))
            continue
        seen.add(normalized)
        results.append(check_alteration(entity, ops))
    return results


# --- DescribeClientQuotas --------------------------------------------------------------

MATCH_TYPE_EXACT = 0
MATCH_TYPE_DEFAULT = 1
MATCH_TYPE_SPECIFIED = 2


@dataclass(frozen=True, slots=True)
class QuotaFilter:
    """A parsed DescribeClientQuotas filter: the names an entity must have by type (None:
    the default entity), the types it must have under any name (Kafka's SPECIFIED also
    matches the default entity), and `strict`: no types besides those."""

    exact: Mapping[str, str | None]
    specified: frozenset[str]
    strict: bool

    def matches(self, entity: QuotaEntity) -> bool:
        """ClientQuotasImage.matches."""
        names = dict(entity)
        if self.strict and len(names) != len(self.exact) + len(self.specified):
            return False
        for entity_type, name in self.exact.items():
            if entity_type not in names or names[entity_type] != name:
                return False
        return all(entity_type in names for entity_type in self.specified)


def parse_quota_filter(
    components: Sequence[tuple[str, int, str | None]], strict: bool
) -> QuotaFilter | QuotaRefusal:
    """DescribeClientQuotas components (entity type, match type, match) checked as
    ClientQuotasImage.describe checks them; a refusal is the whole response's error."""
    exact: dict[str, str | None] = {}
    specified: set[str] = set()
    for entity_type, match_type, match in components:
        if not entity_type:
            return _invalid("Invalid empty entity type.")
        if entity_type in exact or entity_type in specified:
            return _invalid(
                f"Entity type {entity_type} cannot appear more than once in the filter."
            )
        if entity_type not in (ENTITY_IP, ENTITY_USER, ENTITY_CLIENT_ID):
            return QuotaRefusal(
                ErrorCode.unsupported_version, f"Unsupported entity type {entity_type}"
            )
        if match_type == MATCH_TYPE_EXACT:
            if match is None:
                return _invalid("Request specified MATCH_TYPE_EXACT, but set match string to null.")
            exact[entity_type] = match
        elif match_type == MATCH_TYPE_DEFAULT:
            if match is not None:
                return _invalid(
                    "Request specified MATCH_TYPE_DEFAULT, but also specified a match string."
                )
            exact[entity_type] = None
        elif match_type == MATCH_TYPE_SPECIFIED:
            if match is not None:
                return _invalid(
                    "Request specified MATCH_TYPE_SPECIFIED, but also specified a match string."
                )
            specified.add(entity_type)
        else:
            return _invalid(f"Unknown match type {match_type}")
    named_types = set(exact) | specified
    if ENTITY_IP in named_types and named_types & {ENTITY_USER, ENTITY_CLIENT_ID}:
        return _invalid(
            "Invalid entity filter component combination. IP filter component should not "
            "be used with user or clientId filter component."
        )
    return QuotaFilter(exact, frozenset(specified), strict)


def describe_quotas(
    entries: Iterable[QuotaEntryLike], quota_filter: QuotaFilter
) -> list[QuotaEntryLike]:
    """The stored entries the filter matches, in the order given."""
    return [entry for entry in entries if quota_filter.matches(entry.entity)]
