"""Client quotas against Kafka's rules: precedence, buckets, rate, throttle, expiry, and
the AlterClientQuotas / DescribeClientQuotas checks. Worked examples come from Kafka's
ClientQuotaManagerTest and ClientQuotasRequestTest."""

from __future__ import annotations

import bisect

import pytest
from kio.schema.errors import ErrorCode

from driftlog.coordinator.api import QuotaEntry as StoredQuotaEntry
from driftlog.security.quotas import (
    ABSENT,
    CONSUMER_BYTE_RATE,
    ENTITY_CLIENT_ID,
    ENTITY_IP,
    ENTITY_USER,
    MATCH_TYPE_DEFAULT,
    MATCH_TYPE_EXACT,
    MATCH_TYPE_SPECIFIED,
    PRODUCER_BYTE_RATE,
    EntityPart,
    QuotaAlteration,
    QuotaBucketKey,
    QuotaEntity,
    QuotaEntry,
    QuotaFilter,
    QuotaManager,
    QuotaRefusal,
    QuotaResolver,
    QuotaSettings,
    WindowedRate,
    check_alteration,
    check_alterations,
    describe_quotas,
    kafka_sanitize,
    parse_quota_filter,
    quota_entity,
    throttle_ms,
)

_T0_MS = 1_700_000_000_000


def _entry(
    user: EntityPart = ABSENT,
    client_id: EntityPart = ABSENT,
    produce: float | None = None,
    fetch: float | None = None,
) -> QuotaEntry:
    values: dict[str, float] = {}
    if produce is not None:
        values[PRODUCER_BYTE_RATE] = produce
    if fetch is not None:
        values[CONSUMER_BYTE_RATE] = fetch
    return QuotaEntry(quota_entity(user, client_id), values)


# --- Precedence ------------------------------------------------------------------------

# Every level, most specific first, for user "alice" and client id "app".
_LEVELS: list[tuple[QuotaEntity, QuotaBucketKey]] = [
    (quota_entity("alice", "app"), QuotaBucketKey("alice", "app")),
    (quota_entity("alice", None), QuotaBucketKey("alice", "app")),
    (quota_entity("alice", ABSENT), QuotaBucketKey("alice", None)),
    (quota_entity(None, "app"), QuotaBucketKey("alice", "app")),
    (quota_entity(None, None), QuotaBucketKey("alice", "app")),
    (quota_entity(None, ABSENT), QuotaBucketKey("alice", None)),
    (quota_entity(ABSENT, "app"), QuotaBucketKey(None, "app")),
    (quota_entity(ABSENT, None), QuotaBucketKey(None, "app")),
]


def test_every_level_wins_over_the_levels_below_it() -> None:
    for level, (entity, bucket) in enumerate(_LEVELS):
        # This level and every less specific one configured, with values saying which.
        entries = [
            QuotaEntry(e, {PRODUCER_BYTE_RATE: 1000.0 * (i + 1)})
            for i, (e, _) in enumerate(_LEVELS)
            if i >= level
        ]
        # Entries for other names that must never match alice/app.
        entries += [
            _entry("bob", "app", produce=1.0),
            _entry("bob", ABSENT, produce=1.0),
            _entry(ABSENT, "other", produce=1.0),
            _entry("alice", "other", produce=1.0),
        ]
        resolved = QuotaResolver(entries).quota_for("produce", "alice", "app")
        assert resolved is not None
        assert resolved.entity == entity, f"level {level + 1}"
        assert resolved.bucket == bucket, f"level {level + 1}"
        assert resolved.bytes_per_s == 1000.0 * (level + 1)


def test_no_quota_at_all_and_kinds_resolve_on_their_own_key() -> None:
    assert QuotaResolver([]).quota_for("produce", "alice", "app") is None
    resolver = QuotaResolver([_entry("alice", "app", fetch=5.0), _entry(None, ABSENT, produce=7.0)])
    # The <user, client> entry has no producer_byte_rate, so produce falls to <default>.
    produce = resolver.quota_for("produce", "alice", "app")
    fetch = resolver.quota_for("fetch", "alice", "app")
    assert produce is not None and produce.bytes_per_s == 7.0
    assert produce.bucket == QuotaBucketKey("alice", None)
    assert fetch is not None and fetch.bytes_per_s == 5.0
    assert fetch.bucket == QuotaBucketKey("alice", "app")
    assert (
        QuotaResolver([_entry("bob", ABSENT, produce=1.0)]).quota_for("produce", "alice", "app")
        is None
    )


def test_literal_default_names_and_ip_entities_do_not_act_as_defaults() -> None:
    resolver = QuotaResolver(
        [
            _entry(ABSENT, "<default>", produce=1.0),
            QuotaEntry(((ENTITY_IP, None),), {PRODUCER_BYTE_RATE: 2.0}),
        ]
    )
    assert resolver.quota_for("produce", "alice", "app") is None
    resolved = resolver.quota_for("produce", "alice", "<default>")
    assert resolved is not None and resolved.bytes_per_s == 1.0


def test_coordinator_entries_are_accepted_as_they_are() -> None:
    stored = StoredQuotaEntry(
        ((ENTITY_CLIENT_ID, None), (ENTITY_USER, "alice")),
        {PRODUCER_BYTE_RATE: 300.0, "request_percentage": 50.0},
    )
    resolved = QuotaResolver([stored]).quota_for("produce", "alice", "x")
    assert resolved is not None and resolved.bytes_per_s == 300.0
    manager = QuotaManager([stored])
    assert manager.record("produce", "alice", "x", 3000 * 11, _T0_MS) > 0


def _check_quota(
    manager: QuotaManager,
    user: str,
    client_id: str,
    bound: float | None,
    value: int,
    expect_throttle: bool,
    now_ms: int,
) -> None:
    """Kafka's ClientQuotaManagerTest.checkQuota: the bound, the fetch size cap, and
    whether recording value * windows throttles."""
    resolved = manager.resolver.quota_for("produce", user, client_id)
    assert (None if resolved is None else resolved.bytes_per_s) == bound
    window_max = manager.max_bytes_in_window("produce", user, client_id)
    assert window_max == (None if bound is None else bound * 10)
    throttle = manager.record("produce", user, client_id, value * 11, now_ms)
    assert (throttle > 0) == expect_throttle, (user, client_id, throttle)


def test_kafka_quota_config_precedence_scenario() -> None:
    """ClientQuotaManagerTest.testQuotaConfigPrecedence, step for step (no time passes)."""
    now = _T0_MS
    configured: dict[QuotaEntity, float] = {
        quota_entity(None, ABSENT): 1000,
        quota_entity(ABSENT, None): 2000,
        quota_entity(None, None): 3000,
        quota_entity("userA", ABSENT): 4000,
        quota_entity("userA", "client1"): 5000,
        quota_entity("userB", ABSENT): 6000,
        quota_entity("userB", "client1"): 7000,
        quota_entity("userB", None): 8000,
        quota_entity("userC", ABSENT): 10000,
        quota_entity(ABSENT, "client1"): 9000,
    }

    def entries() -> list[QuotaEntry]:
        return [QuotaEntry(e, {PRODUCER_BYTE_RATE: v}) for e, v in configured.items()]

    m = QuotaManager(entries())
    _check_quota(m, "userA", "client1", 5000, 4500, False, now)
    _check_quota(m, "userA", "client2", 4000, 4500, True, now)
    _check_quota(m, "userA", "client3", 4000, 0, True, now)  # <user> shared by clients
    _check_quota(m, "userA", "client1", 5000, 0, False, now)  # <user, client> exclusive

    _check_quota(m, "userB", "client1", 7000, 8000, True, now)
    _check_quota(m, "userB", "client2", 8000, 7000, False, now)  # default per client
    _check_quota(m, "userB", "client3", 8000, 7000, False, now)

    _check_quota(m, "userD", "client1", 3000, 3500, True, now)  # default <user, client>
    _check_quota(m, "userD", "client2", 3000, 2500, False, now)
    _check_quota(m, "userE", "client1", 3000, 2500, False, now)

    del configured[quota_entity(None, None)]
    m.update(entries())
    _check_quota(m, "userD", "client1", 1000, 0, False, now)  # new bucket, fresh count
    _check_quota(m, "userE", "client4", 1000, 1500, True, now)
    _check_quota(m, "userF", "client4", 1000, 800, False, now)  # default <user> shared
    _check_quota(m, "userF", "client5", 1000, 800, True, now)

    del configured[quota_entity(None, ABSENT)]
    m.update(entries())
    _check_quota(m, "userF", "client4", 2000, 0, False, now)  # default <client-id>
    _check_quota(m, "userF", "client5", 2000, 0, False, now)
    _check_quota(m, "userF", "client5", 2000, 2500, True, now)
    _check_quota(m, "userG", "client5", 2000, 0, True, now)  # shared across users

    configured[quota_entity("userA", ABSENT)] = 8000
    configured[quota_entity("userA", "client1")] = 10000
    m.update(entries())
    _check_quota(m, "userA", "client2", 8000, 0, False, now)
    _check_quota(m, "userA", "client2", 8000, 4500, True, now)  # kept bucket: sum counts
    _check_quota(m, "userA", "client1", 10000, 0, False, now)
    _check_quota(m, "userA", "client1", 10000, 6000, True, now)
    del configured[quota_entity("userA", "client1")]
    m.update(entries())
    _check_quota(m, "userA", "client6", 8000, 0, True, now)  # shared user quota
    configured[quota_entity("userA", "client6")] = 11000
    m.update(entries())
    _check_quota(m, "userA", "client6", 11000, 8500, False, now)
    configured[quota_entity("userA", None)] = 12000
    del configured[quota_entity("userA", "client6")]
    m.update(entries())
    _check_quota(m, "userA", "client6", 12000, 4000, True, now)  # same key, sum counts


# --- Shared and separate buckets ------------------------------------------------------


@pytest.mark.parametrize(
    ("entry", "first", "second", "shared"),
    [
        # /users/<user>: all of alice's clients share one bucket.
        (_entry("alice", ABSENT, produce=1000), ("alice", "a"), ("alice", "b"), True),
        # /users/<default>: one bucket per user, shared by that user's clients...
        (_entry(None, ABSENT, produce=1000), ("alice", "a"), ("alice", "b"), True),
        # ...but not with other users.
        (_entry(None, ABSENT, produce=1000), ("alice", "a"), ("bob", "a"), False),
        # /clients/<default>: one bucket per client id, across users.
        (_entry(ABSENT, None, produce=1000), ("alice", "a"), ("bob", "a"), True),
        (_entry(ABSENT, None, produce=1000), ("alice", "a"), ("alice", "b"), False),
        # /users/<user>/clients/<default>: one bucket per client id of that user.
        (_entry("alice", None, produce=1000), ("alice", "a"), ("alice", "b"), False),
        # /users/<default>/clients/<default>: one per (user, client id).
        (_entry(None, None, produce=1000), ("alice", "a"), ("bob", "a"), False),
    ],
)
def test_buckets_are_shared_by_the_resolved_entity(
    entry: QuotaEntry, first: tuple[str, str], second: tuple[str, str], shared: bool
) -> None:
    m = QuotaManager([entry])
    # 9,000 bytes each: 900 B/s alone is within 1000 B/s, 1800 B/s together is not.
    assert m.record("produce", *first, 9000, _T0_MS) == 0
    throttled = m.record("produce", *second, 9000, _T0_MS) > 0
    assert throttled == shared
    assert m.bucket_count == (1 if shared else 2)


def test_produce_and_fetch_are_counted_apart() -> None:
    m = QuotaManager([_entry("alice", ABSENT, produce=1000, fetch=1000)])
    assert m.record("produce", "alice", "a", 9000, _T0_MS) == 0
    assert m.record("fetch", "alice", "a", 9000, _T0_MS) == 0
    assert m.bucket_count == 2


def test_empty_client_id_is_an_id_like_any_other() -> None:
    # Kafka's "" tag would leave this client unthrottled; here it gets its own bucket.
    m = QuotaManager([_entry(ABSENT, None, produce=1000)])
    resolved = m.resolver.quota_for("produce", "ANONYMOUS", "")
    assert resolved is not None and resolved.bucket == QuotaBucketKey(None, "")
    assert m.record("produce", "ANONYMOUS", "", 20_000, _T0_MS) > 0


# --- Rate and throttle arithmetic ----------------------------------------------------


def test_kafka_quota_violation_example() -> None:
    """ClientQuotaManagerTest.testQuotaViolation: <default> client quota of 500 B/s."""
    m = QuotaManager([_entry(ABSENT, None, produce=500)])
    now = _T0_MS
    for _ in range(10):
        assert m.record("produce", "ANONYMOUS", "unknown", 400, now) == 0
        now += 1000
    # 400 * 10 + 2300 = 6300 bytes over 10.5 s (the last window half done) = 600 B/s;
    # (600 - 500) / 500 * 10,500 ms = 2,100 ms.
    now += 500
    throttle = m.record("produce", "ANONYMOUS", "unknown", 2300, now)
    assert throttle == 2100
    now += throttle
    for _ in range(10):
        m.record("produce", "ANONYMOUS", "unknown", 400, now)
        now += 1000
    assert m.record("produce", "ANONYMOUS", "unknown", 0, now) == 0  # burst rolled over


def test_young_bucket_counts_as_full_windows() -> None:
    # First recording: elapsed 0 counts as 10 whole windows, so 20,000 B is 2,000 B/s;
    # against 1,000 B/s that is (2000 - 1000) / 1000 * 10,000 ms.
    m = QuotaManager([_entry("u", ABSENT, produce=1000)])
    assert m.record("produce", "u", "c", 20_000, _T0_MS) == 10_000
    # Exactly at the quota is within it (Quota.acceptable is value <= bound).
    m2 = QuotaManager([_entry("u", ABSENT, produce=1000)])
    assert m2.record("produce", "u", "c", 10_000, _T0_MS) == 0
    assert m2.record("produce", "u", "c", 1, _T0_MS) == 1  # 1000.1 B/s: 0.1 / 1000 * 10 s


def test_window_size_after_many_windows_and_after_idleness() -> None:
    rate = WindowedRate(window_size_ms=1000, window_count=11)
    assert rate.window_size(_T0_MS) == 10_000  # nothing yet: the minimum span
    for second in range(30):
        rate.record(100, _T0_MS + second * 1000)
    # 12 slots rotate (samples began at 18..29 s); at 29.25 s the one last written at
    # 18 s is 11.25 s old, obsolete, so 11 samples of 100 remain, the oldest from 19 s.
    now = _T0_MS + 29_000 + 250
    assert rate.window_size(now) == 10_250
    assert rate.measure(now) == pytest.approx(1100 / 10.25)
    # That purge restarted the obsolete sample at 29.25 s, so it lives until 11 s after;
    # then every sample is obsolete: back to the minimum span, rate 0.
    later = _T0_MS + 40_250
    assert rate.window_size(later) == 10_000
    assert rate.measure(later) == 0.0


def test_throttle_formula_and_java_rounding() -> None:
    assert throttle_ms(600, 500, 10_500) == 2100
    assert throttle_ms(500, 500, 10_000) == 0
    assert throttle_ms(400, 500, 10_000) == 0
    # Halves round up, as Java's Math.round (Python's round would give 0 and 2).
    assert throttle_ms(1001, 1000, 500) == 1
    assert throttle_ms(1005, 1000, 500) == 3
    assert throttle_ms(1000.9, 1000, 500) == 0


def test_throttle_is_capped() -> None:
    # 10 GB against 1 B/s would be ~10^12 ms: more than the int32 wire field holds.
    m = QuotaManager([_entry("u", ABSENT, produce=1)])
    assert m.record("produce", "u", "c", 10**10, _T0_MS) == 2**31 - 1
    capped = QuotaManager([_entry("u", ABSENT, produce=1)], QuotaSettings(throttle_ms_max=30_000))
    assert capped.record("produce", "u", "c", 10**10, _T0_MS) == 30_000


def test_unrecord_takes_back_a_throttled_fetch() -> None:
    m = QuotaManager([_entry("u", ABSENT, fetch=1000)])
    assert m.record("fetch", "u", "c", 9_000, _T0_MS) == 0
    assert m.record("fetch", "u", "c", 5_000, _T0_MS) > 0
    m.unrecord("fetch", "u", "c", 5_000, _T0_MS)
    assert m.rate("fetch", QuotaBucketKey("u", None), _T0_MS) == pytest.approx(900.0)
    assert m.record("fetch", "u", "c", 1_000, _T0_MS) == 0


def test_max_bytes_in_window_with_fewer_windows() -> None:
    # testGetMaxValueInQuotaWindowWithNonDefaultQuotaWindow: 3 full windows, 10 B/s.
    m = QuotaManager([], QuotaSettings(window_count=4))
    assert m.max_bytes_in_window("fetch", "userA", "client1") is None
    m.update([_entry(None, ABSENT, fetch=10)])
    assert m.max_bytes_in_window("fetch", "userA", "client1") == pytest.approx(30.0)


def _run_producers(
    manager: QuotaManager,
    producers: list[tuple[str, str]],
    request_bytes: int,
    duration_ms: int,
    think_ms: int = 1,
) -> list[list[tuple[int, int]]]:
    """Each producer sends as fast as it may: after each request it waits out the
    throttle (the broker mutes its connection) and `think_ms`. Returns per producer
    (time, cumulative bytes) after each request."""
    next_send = [_T0_MS + i for i in range(len(producers))]
    sent = [0] * len(producers)
    marks: list[list[tuple[int, int]]] = [[(_T0_MS, 0)] for _ in producers]
    while True:
        i = min(range(len(producers)), key=lambda k: next_send[k])
        now = next_send[i]
        if now - _T0_MS >= duration_ms:
            return marks
        user, client_id = producers[i]
        throttle = manager.record("produce", user, client_id, request_bytes, now)
        sent[i] += request_bytes
        next_send[i] = now + throttle + think_ms
        marks[i].append((next_send[i], sent[i]))


def _worst_span_error(marks: list[tuple[int, int]], span_ms: int, quota: float) -> float:
    times = [t for t, _ in marks]
    worst = 0.0
    for t0, sent0 in marks:
        j = bisect.bisect_left(times, t0 + span_ms)
        if j >= len(marks):
            break
        t1, sent1 = marks[j]
        worst = max(worst, abs((sent1 - sent0) / ((t1 - t0) / 1000) / quota - 1))
    return worst


@pytest.mark.parametrize("request_bytes", [16_384, 262_144, 1_000_000])
def test_a_producer_that_waits_out_its_throttle_holds_the_quota(request_bytes: int) -> None:
    quota = 1_000_000.0
    m = QuotaManager([_entry("alice", ABSENT, produce=quota)])
    (marks,) = _run_producers(m, [("alice", "p")], request_bytes, duration_ms=600_000)
    end_ms, total = marks[-1]
    assert total / ((end_ms - _T0_MS) / 1000) == pytest.approx(quota, rel=0.02)
    # Kafka's windows let it burst within about 11 s, but any 2 minutes hold to 10%.
    assert _worst_span_error(marks, 120_000, quota) < 0.10


def test_two_clients_of_one_user_share_the_quota_over_a_long_run() -> None:
    quota = 500_000.0
    m = QuotaManager([_entry("alice", ABSENT, produce=quota)])
    marks = _run_producers(m, [("alice", "p1"), ("alice", "p2")], 65_536, 600_000)
    end_ms = max(m_[-1][0] for m_ in marks)
    total = sum(m_[-1][1] for m_ in marks)
    assert total / ((end_ms - _T0_MS) / 1000) == pytest.approx(quota, rel=0.03)
    assert m.bucket_count == 1


# --- Expiry and bounds ------------------------------------------------------------------


def test_idle_buckets_expire_after_an_hour() -> None:
    m = QuotaManager([_entry(None, ABSENT, produce=1000)])
    assert m.record("produce", "alice", "a", 9_000, _T0_MS) == 0
    assert m.record("produce", "bob", "b", 9_000, _T0_MS + 1_800_000) == 0
    assert m.expire(_T0_MS + 3_600_000) == 0  # exactly an hour idle: not yet
    assert m.expire(_T0_MS + 3_600_001) == 1  # alice's is gone, bob's stays
    assert m.bucket_count == 1
    assert m.rate("produce", QuotaBucketKey("alice", None), _T0_MS + 3_600_001) is None
    assert m.rate("produce", QuotaBucketKey("bob", None), _T0_MS + 3_600_001) is not None
    # A recording sweeps too.
    m.record("produce", "carol", "c", 1, _T0_MS + 5_400_001)
    assert m.bucket_count == 1


def test_an_expired_bucket_starts_afresh() -> None:
    # Expiry shorter than the 11 s the samples span, so forgetting is what resets it.
    settings = QuotaSettings(idle_expiry_ms=5_000)
    kept = QuotaManager([_entry("u", ABSENT, produce=1000)])
    forgot = QuotaManager([_entry("u", ABSENT, produce=1000)], settings)
    for m in (kept, forgot):
        assert m.record("produce", "u", "c", 50_000, _T0_MS) > 0
    assert forgot.expire(_T0_MS + 5_000) == 0
    assert forgot.expire(_T0_MS + 5_001) == 1
    assert kept.record("produce", "u", "c", 9_000, _T0_MS + 5_001) > 0
    assert forgot.record("produce", "u", "c", 9_000, _T0_MS + 5_001) == 0


def test_bucket_count_is_bounded_least_recently_used_first() -> None:
    m = QuotaManager([_entry(ABSENT, None, produce=1000)], QuotaSettings(bucket_count_max=3))
    for i in range(3):
        m.record("produce", "u", f"c{i}", 9_000, _T0_MS + i)
    m.record("produce", "u", "c0", 1, _T0_MS + 10)  # c0 becomes most recent
    m.record("produce", "u", "c3", 1, _T0_MS + 11)  # evicts c1
    assert m.bucket_count == 3
    assert m.rate("produce", QuotaBucketKey(None, "c1"), _T0_MS + 12) is None
    assert m.rate("produce", QuotaBucketKey(None, "c0"), _T0_MS + 12) is not None
    for i in range(1000):
        m.record("produce", "u", f"flood{i}", 1, _T0_MS + 20 + i)
    assert m.bucket_count == 3


def test_clients_without_a_quota_get_no_bucket() -> None:
    m = QuotaManager([_entry("alice", ABSENT, produce=1000)])
    assert m.record("produce", "bob", "b", 10**9, _T0_MS) == 0
    assert m.bucket_count == 0


def test_update_keeps_rates_of_unchanged_keys() -> None:
    m = QuotaManager([_entry("u", ABSENT, produce=1000)])
    assert m.record("produce", "u", "c", 9_000, _T0_MS) == 0
    m.update([_entry("u", ABSENT, produce=500)])  # same bucket, lower quota
    assert m.record("produce", "u", "c", 0, _T0_MS) == 8_000  # (900-500)/500 * 10 s
    m.update([_entry("u", "c", produce=500)])  # more specific entity: a new key
    assert m.record("produce", "u", "c", 0, _T0_MS) == 0


# --- Names ---------------------------------------------------------------------------


def test_kafka_sanitize_matches_javas_url_encoder_plus_kafkas_fixes() -> None:
    assert kafka_sanitize("alice") == "alice"
    assert kafka_sanitize("user with spaces") == "user%20with%20spaces"
    assert kafka_sanitize("a*b") == "a%2Ab"
    assert kafka_sanitize("CN=x,OU=y") == "CN%3Dx%2COU%3Dy"
    assert kafka_sanitize("é~") == "%C3%A9%7E"
    assert kafka_sanitize("a.b-c_d") == "a.b-c_d"
    assert QuotaBucketKey("CN=x y", None).metric_tags() == {"user": "CN%3Dx%20y", "client-id": ""}


# --- AlterClientQuotas -----------------------------------------------------------------


def _refused(result: QuotaAlteration | QuotaRefusal, message: str) -> None:
    assert isinstance(result, QuotaRefusal), result
    assert result.error_code == ErrorCode.invalid_request
    assert result.message == message


def test_alteration_accepts_kafkas_valid_input_and_normalizes_order() -> None:
    result = check_alteration(
        [(ENTITY_USER, "alice"), (ENTITY_CLIENT_ID, None)],
        [(PRODUCER_BYTE_RATE, 1024.0), (CONSUMER_BYTE_RATE, None), ("anything", None)],
    )
    assert result == QuotaAlteration(
        ((ENTITY_CLIENT_ID, None), (ENTITY_USER, "alice")),
        ((PRODUCER_BYTE_RATE, 1024.0), (CONSUMER_BYTE_RATE, None), ("anything", None)),
    )
    assert isinstance(
        check_alteration([(ENTITY_USER, None)], [(CONSUMER_BYTE_RATE, 2.0**63)]), QuotaAlteration
    )


def test_alteration_refusals_are_kafkas() -> None:
    user = [(ENTITY_USER, "user")]
    _refused(check_alteration([], [(PRODUCER_BYTE_RATE, 1.0)]), "Invalid empty client quota entity")
    _refused(
        check_alteration([(ENTITY_USER, "")], [(PRODUCER_BYTE_RATE, 1.0)]),
        "Empty user not supported",
    )
    _refused(
        check_alteration([(ENTITY_CLIENT_ID, "")], [(PRODUCER_BYTE_RATE, 1.0)]),
        "Empty client-id not supported",
    )
    _refused(
        check_alteration([("", "name")], [(PRODUCER_BYTE_RATE, 1.0)]),
        "Unhandled client quota entity type: ",
    )
    _refused(
        check_alteration([(ENTITY_USER, "a"), (ENTITY_USER, "b")], []),
        "Invalid client quota entity, duplicate entity entry user",
    )
    _refused(check_alteration(user, [("bad", 1.0)]), "Invalid configuration key bad")
    _refused(
        check_alteration(user, [(PRODUCER_BYTE_RATE, 10000.5)]),
        "producer_byte_rate cannot be a fractional value.",
    )
    _refused(
        check_alteration(user, [(PRODUCER_BYTE_RATE, 0.0)]),
        "Quota producer_byte_rate must be greater than 0",
    )
    _refused(
        check_alteration(user, [(CONSUMER_BYTE_RATE, -5.0)]),
        "Quota consumer_byte_rate must be greater than 0",
    )
    _refused(
        check_alteration(user, [(CONSUMER_BYTE_RATE, 2.0**64)]),
        "Proposed value for consumer_byte_rate is too large for a LONG.",
    )
    _refused(
        check_alteration(user, [(CONSUMER_BYTE_RATE, float("inf"))]),
        "Proposed value for consumer_byte_rate is too large for a LONG.",
    )
    _refused(
        check_alteration(user, [(CONSUMER_BYTE_RATE, float("nan"))]),
        "Quota consumer_byte_rate must be a number",
    )
    _refused(
        check_alteration(user, [(PRODUCER_BYTE_RATE, 1.0), (PRODUCER_BYTE_RATE, 2.0)]),
        "Duplicate quota key producer_byte_rate not updating quota for this entity {user=user}",
    )
    _refused(
        check_alteration(user, [("request_percentage", 12.34)]),
        "Quota request_percentage is not supported by Driftlog",
    )
    _refused(
        check_alteration([(ENTITY_IP, "1.2.3.4")], [("connection_creation_rate", 5.0)]),
        "Quotas on ip entities (connection rates) are not supported",
    )


def test_a_request_refuses_an_entity_it_names_twice() -> None:
    results = check_alterations(
        [
            ([(ENTITY_USER, "a")], [(PRODUCER_BYTE_RATE, 1.0)]),
            ([(ENTITY_CLIENT_ID, None), (ENTITY_USER, "a")], [(PRODUCER_BYTE_RATE, 1.0)]),
            ([(ENTITY_USER, "a")], [(PRODUCER_BYTE_RATE, 2.0)]),
        ]
    )
    assert isinstance(results[0], QuotaAlteration)
    assert isinstance(results[1], QuotaAlteration)
    _refused(results[2], "Ignoring duplicate entity {user=a}")


# --- DescribeClientQuotas ----------------------------------------------------------------

# ClientQuotasRequestTest's match set (user, client-id; ABSENT: not in the entity).
_MATCH_SET: list[QuotaEntry] = [
    _entry(u, c, produce=1.0)
    for u, c in [
        ("user-1", "client-id-1"),
        ("user-2", "client-id-1"),
        ("user-3", "client-id-2"),
        (None, "client-id-1"),
        ("user-1", None),
        ("user-3", None),
        ("user-1", ABSENT),
        ("user-2", ABSENT),
        ("user-3", ABSENT),
        (None, ABSENT),
        (ABSENT, "client-id-2"),
    ]
]


def _filter(components: list[tuple[str, int, str | None]], strict: bool) -> QuotaFilter:
    parsed = parse_quota_filter(components, strict)
    assert isinstance(parsed, QuotaFilter), parsed
    return parsed


def _described(components: list[tuple[str, int, str | None]], strict: bool) -> int:
    return len(describe_quotas(_MATCH_SET, _filter(components, strict)))


def test_describe_filters_match_as_kafkas() -> None:
    exact, default, specified = MATCH_TYPE_EXACT, MATCH_TYPE_DEFAULT, MATCH_TYPE_SPECIFIED
    assert _described([(ENTITY_USER, exact, "user-1")], False) == 3
    assert _described([(ENTITY_USER, exact, "unknown")], False) == 0
    assert _described([(ENTITY_CLIENT_ID, exact, "client-id-2")], False) == 2
    assert _described([(ENTITY_USER, default, None)], False) == 2
    assert _described([(ENTITY_USER, exact, "user-2")], True) == 1
    assert _described([(ENTITY_CLIENT_ID, exact, "client-id-1")], True) == 0
    assert _described([(ENTITY_USER, specified, None)], True) == 4  # default included
    assert _described([(ENTITY_USER, specified, None)], False) == 10
    assert _described([(ENTITY_CLIENT_ID, specified, None)], True) == 1
    assert _described([(ENTITY_CLIENT_ID, specified, None)], False) == 7
    assert _described([(ENTITY_IP, specified, None)], False) == 0  # none are stored
    assert _described([], False) == 11
    assert _described([], True) == 0


def test_describe_exact_match_of_each_entity_finds_only_it() -> None:
    for entry in _MATCH_SET:
        components: list[tuple[str, int, str | None]] = [
            (t, MATCH_TYPE_DEFAULT, None) if n is None else (t, MATCH_TYPE_EXACT, n)
            for t, n in entry.entity
        ]
        found = describe_quotas(_MATCH_SET, _filter(components, True))
        assert [f.entity for f in found] == [entry.entity]
    # A client id literally named "<default>" is not the default entity.
    literal = [_entry(ABSENT, "<default>", produce=1.0)]
    assert (
        describe_quotas(literal, _filter([(ENTITY_CLIENT_ID, MATCH_TYPE_DEFAULT, None)], True))
        == []
    )


@pytest.mark.parametrize(
    ("components", "code", "message"),
    [
        (
            [("", MATCH_TYPE_SPECIFIED, None)],
            ErrorCode.invalid_request,
            "Invalid empty entity type.",
        ),
        (
            [(ENTITY_USER, MATCH_TYPE_SPECIFIED, None), (ENTITY_USER, MATCH_TYPE_EXACT, "a")],
            ErrorCode.invalid_request,
            "Entity type user cannot appear more than once in the filter.",
        ),
        (
            [("other", MATCH_TYPE_EXACT, "name")],
            ErrorCode.unsupported_version,
            "Unsupported entity type other",
        ),
        (
            [(ENTITY_USER, MATCH_TYPE_EXACT, None)],
            ErrorCode.invalid_request,
            "Request specified MATCH_TYPE_EXACT, but set match string to null.",
        ),
        (
            [(ENTITY_USER, MATCH_TYPE_DEFAULT, "a")],
            ErrorCode.invalid_request,
            "Request specified MATCH_TYPE_DEFAULT, but also specified a match string.",
        ),
        (
            [(ENTITY_USER, MATCH_TYPE_SPECIFIED, "a")],
            ErrorCode.invalid_request,
            "Request specified MATCH_TYPE_SPECIFIED, but also specified a match string.",
        ),
        ([(ENTITY_USER, 7, None)], ErrorCode.invalid_request, "Unknown match type 7"),
        (
            [(ENTITY_IP, MATCH_TYPE_SPECIFIED, None), (ENTITY_USER, MATCH_TYPE_SPECIFIED, None)],
            ErrorCode.invalid_request,
            "Invalid entity filter component combination. IP filter component should not be "
            "used with user or clientId filter component.",
        ),
    ],
)
def test_describe_filter_refusals_are_kafkas(
    components: list[tuple[str, int, str | None]], code: ErrorCode, message: str
) -> None:
    assert parse_quota_filter(components, False) == QuotaRefusal(code, message)
