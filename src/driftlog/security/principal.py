"""Who a client is: Kafka principals, and the names TLS certificates give them.

A principal is `User:<name>`, as Kafka writes it in ACLs and quotas. A client that
proved nothing is `User:ANONYMOUS`; a SASL client is named by its user name; a TLS
client with a certificate by the certificate's distinguished name (RFC 2253 order
and escaping, as Java's `X500Principal.getName()` writes it), mapped by Kafka's
`ssl.principal.mapping.rules` (`RULE:pattern/replacement/[LU]`, then `DEFAULT`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from cryptography import x509

ANONYMOUS = "User:ANONYMOUS"
USER = "User"


def user_principal(name: str) -> str:
    return f"{USER}:{name}"


def certificate_subject(der: bytes) -> str:
    """The subject of a DER certificate as Kafka names it before mapping."""
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


class PrincipalMappingError(ValueError):
    pass


# Kafka's SslPrincipalMapper grammar: DEFAULT, or RULE:pattern/replacement/ with an
# optional L or U; a backslash escapes the next character inside the two parts.
_RULE = r"(DEFAULT)|RULE:((?:\\.|[^\\/])*)/((?:\\.|[^\\/])*)/([LU]?).*?|(.*?)"
_SPLITTER = re.compile(r"\s*(" + _RULE + r")\s*(?:,\s*|$)")
_PARSER = re.compile(_RULE)
_BACK_REFERENCE = re.compile(r"\$(\d+)")


@dataclass(frozen=True, slots=True)
class _Rule:
    pattern: re.Pattern[str] | None  # None: DEFAULT (the name as it is)
    replacement: str = ""
    case: str = ""  # "L", "U" or ""

    def apply(self, name: str) -> str | None:
        if self.pattern is None:
            return name
        if self.pattern.fullmatch(name) is None:
            return None
        result = self.pattern.sub(_python_replacement(self.replacement, self.pattern), name)
        if self.case == "L":
            return result.lower()
        if self.case == "U":
            return result.upper()
        return result


def _python_replacement(replacement: str, pattern: re.Pattern[str]) -> str:
    """Java's `$n` back references in Python's syntax; a `$n` past the groups stays
    literal (Kafka truncates digits first: `$12` with 3 groups is `$1` then `2`)."""
    groups = pattern.groups
    literal = replacement.replace("\\", "\\\\")

    def convert(m: re.Match[str]) -> str:
        digits = m.group(1)
        index = int(digits)
        while index > groups and index >= 10:
            index //= 10
        if index == 0 or index > groups:
            return "$" + digits
        rest = digits[len(str(index)) :]
        return f"\\g<{index}>{rest}"

    return _BACK_REFERENCE.sub(convert, literal)


class PrincipalMapper:
    """`ssl.principal.mapping.rules`: the first rule that matches names the client."""

    def __init__(self, rules: str = "DEFAULT") -> None:
        parsed = [_parse_rule(rule) for rule in _split(rules or "DEFAULT")]
        self._rules = [rule for rule in parsed if rule is not None]

    def name(self, distinguished_name: str) -> str:
        for rule in self._rules:
            mapped = rule.apply(distinguished_name)
            if mapped is not None:
                return mapped
        raise PrincipalMappingError(f"no ssl.principal.mapping.rules apply to {distinguished_name}")


def _split(rules: str) -> list[str]:
    return [m.group(1) for m in _SPLITTER.finditer(rules.strip()) if m.group(1) is not None]


def _parse_rule(rule: str) -> _Rule | None:
    m = _PARSER.match(rule)
    if m is None or m.end() != len(rule):
        raise PrincipalMappingError(f"invalid ssl.principal.mapping.rules rule: {rule!r}")
    if m.group(1) is not None:
        return _Rule(None)
    if m.group(2) is not None:
        try:
            pattern = re.compile(m.group(2))
        except re.error as e:
            raise PrincipalMappingError(f"invalid pattern in rule {rule!r}: {e}") from None
        return _Rule(pattern, m.group(3), m.group(4))
    return None  # an empty rule is ignored, as in Kafka
