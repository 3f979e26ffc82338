"""DKIM keys and signatures, checked by an independent verifier (dkimpy) without any network.

The DNS answer dkimpy asks for is the key's own ``txt_record``. Signatures use
the real clock: dkimpy refuses a ``t=`` in the future.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable
from functools import cache
from random import Random

import dkim as dkimpy
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from relay.core import dkim
from relay.core.dkim import Algorithm, KeyProblem, SigningKey

DOMAIN = "example.com"
SELECTOR = "relay1"
RECORD_NAME = f"{SELECTOR}._domainkey.{DOMAIN}."

MESSAGE = (
    b"Received: from shop.example.com by relay.test; Thu, 1 Jan 2026 00:00:00 +0000\r\n"
    b"From: Sales Team <sales@example.com>\r\n"
    b"To: a@example.org\r\n"
    b"Subject: Your order 42\r\n"
    b"Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n"
    b"Message-ID: <42@relay.test>\r\n"
    b"X-Mailer: shop 1.0\r\n"
    b"\r\n"
    b"Thank you for your order.\r\n"
    b"It ships tomorrow.\r\n"
)

# A typical message from a web shop: MIME fields and a Reply-To, as the relay's rewrite adds.
MIME_MESSAGE = (
    b"From: Sales Team <sales@example.com>\r\n"
    b"To: a@example.org\r\n"
    b"Subject: Your order 42\r\n"
    b"Date: Thu, 1 Jan 2026 00:00:00 +0000\r\n"
    b"Message-ID: <42@relay.test>\r\n"
    b"Reply-To: <orders@shop.example.com>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"Content-Type: text/plain; charset=utf-8\r\n"
    b"Content-Transfer-Encoding: 8bit\r\n"
    b"\r\n"
    b"Thank you for your order.\r\n"
)

# A 512-bit RSA key, too small for DKIM (cryptography no longer generates one).
P512 = 95138460641967071213960968963930026655505244095312087050486173055443605117237
Q512 = 92524206861333609995763304594945495357592549212946547922829395989691157717431


@cache
def private_key(algorithm: Algorithm) -> dkim.PrivateKey:
    """One key per algorithm for the module (RSA-2048 generation is the slow part)."""
    return dkim.generate(algorithm)


def signing_key(algorithm: Algorithm = Algorithm.RSA) -> SigningKey:
    return SigningKey(DOMAIN, SELECTOR, private_key(algorithm))


def verifies(message: bytes, algorithm: Algorithm = Algorithm.RSA) -> bool:
    """dkimpy's verdict, with DNS answering only the selector's record."""
    record = dkim.txt_record(private_key(algorithm)).encode()

    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        return record if name.decode().lower() in (RECORD_NAME, RECORD_NAME[:-1]) else None

    return bool(dkimpy.verify(message, dnsfunc=dnsfunc))


def signed(message: bytes = MESSAGE, algorithm: Algorithm = Algorithm.RSA) -> bytes:
    return dkim.sign(message, signing_key(algorithm), time.time())


def tags(field: bytes) -> dict[str, str]:
    """The tags of a DKIM-Signature field, unfolded, whitespace inside values removed."""
    value = field.decode("ascii").split(":", 1)[1]
    pairs = (part.split("=", 1) for part in value.split(";") if part.strip())
    return {name.strip(): re.sub(r"\s", "", tag_value) for name, tag_value in pairs}


def header_list(field: bytes) -> list[str]:
    return tags(field)["h"].split(":")


def replace_once(message: bytes, old: bytes, new: bytes) -> bytes:
    assert message.count(old) == 1
    return message.replace(old, new)


def add_after_signature(message: bytes, field: bytes) -> bytes:
    """Insert a field right below the DKIM-Signature (above every signed field)."""
    head, _, rest = message.partition(b"\r\nFrom:")
    return head + b"\r\n" + field + b"From:" + rest


def insert_before_body(message: bytes, field: bytes) -> bytes:
    head, _, body = message.partition(b"\r\n\r\n")
    return head + b"\r\n" + field.rstrip(b"\r\n") + b"\r\n\r\n" + body


# -- Signatures verify; changes break them.


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_signature_verifies(algorithm: Algorithm) -> None:
    assert verifies(signed(algorithm=algorithm), algorithm)


def test_sign_prepends_the_field_to_the_message_unchanged() -> None:
    key = signing_key()
    now = time.time()

    message = dkim.sign(MESSAGE, key, now)

    assert message == dkim.signature_field(MESSAGE, key, now) + MESSAGE


def test_another_domains_key_does_not_verify() -> None:
    other = SigningKey(DOMAIN, SELECTOR, dkim.generate(Algorithm.ED25519))

    assert not verifies(dkim.sign(MESSAGE, other, time.time()), Algorithm.ED25519)


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_tampered_subject_fails(algorithm: Algorithm) -> None:
    message = replace_once(signed(algorithm=algorithm), b"order 42", b"order 43")

    assert not verifies(message, algorithm)


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_changed_word_in_body_fails(algorithm: Algorithm) -> None:
    message = replace_once(signed(algorithm=algorithm), b"tomorrow", b"today")

    assert not verifies(message, algorithm)


def test_appended_body_text_fails() -> None:
    """No l= tag: a body extended after signing does not verify."""
    assert not verifies(signed() + b"Click here for a prize.\r\n")


@pytest.mark.parametrize(
    "add",
    [
        pytest.param(add_after_signature, id="above"),
        pytest.param(insert_before_body, id="below"),
    ],
)
def test_an_added_from_fails(add: Callable[[bytes, bytes], bytes]) -> None:
    """From is signed once more than it occurs, so a second From cannot be slipped in."""
    assert not verifies(add(signed(), b"From: Mallory <boss@example.com>\r\n"))


def test_a_to_added_below_the_signed_one_fails() -> None:
    """Verifiers take the bottom-most instance: an added last To replaces the signed one."""
    assert not verifies(insert_before_body(signed(), b"To: mallory@example.net\r\n"))


@pytest.mark.parametrize(
    "field",
    [
        b"To: mallory@example.net\r\n",
        b"Cc: mallory@example.net\r\n",
        b"Subject: Urgent\r\n",
        b"Reply-To: mallory@example.net\r\n",
    ],
)
def test_an_added_to_cc_subject_or_reply_to_fails_even_above(field: bytes) -> None:
    """Over-signed: one more instance than present, so none can be added anywhere."""
    assert not verifies(add_after_signature(signed(), field))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(b"tomorrow.\r\n", b"tomorrow.   \t\r\n", id="trailing-whitespace"),
        pytest.param(b"It ships", b"It    ships", id="run-of-spaces"),
        pytest.param(b"tomorrow.\r\n", b"tomorrow.\r\n\r\n\r\n\r\n", id="blank-lines-at-end"),
    ],
)
def test_body_whitespace_changes_within_relaxed_rules_still_verify(old: bytes, new: bytes) -> None:
    assert verifies(replace_once(signed(), old, new))


@pytest.mark.parametrize(
    ("old", "new"),
    [
        pytest.param(b"Subject: Your", b"SUBJECT:   Your", id="name-case-and-space"),
        pytest.param(b"Subject: Your order 42", b"Subject: Your\r\n order 42", id="refolded"),
    ],
)
def test_header_changes_within_relaxed_rules_still_verify(old: bytes, new: bytes) -> None:
    assert verifies(replace_once(signed(), old, new))


@pytest.mark.parametrize(
    "message",
    [
        pytest.param(b"From: sales@example.com\r\n\r\n", id="empty-body"),
        pytest.param(b"From: sales@example.com\r\n", id="no-body-at-all"),
        pytest.param(
            b"From: sales@example.com\r\n\r\n\r\n\r\nafter blank lines\r\n",
            id="leading-blank-lines",
        ),
        pytest.param(
            b"From: sales@example.com\r\n\r\nx\ty  \t z\r\n \t \r\n\r\n", id="tabs-and-blank-end"
        ),
        pytest.param(b"From: sales@example.com\r\n\r\nno final line break  ", id="no-final-crlf"),
        pytest.param(
            b"From: sales@example.com\r\nSubject: a\r\n\tfolded one\r\n\r\nbody\r\n", id="folded"
        ),
    ],
)
def test_unusual_message_shapes_verify(message: bytes) -> None:
    assert verifies(signed(message))


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_utf8_headers_and_body_sign_and_verify(algorithm: Algorithm) -> None:
    message = (
        "From: Verkauf <sales@example.com>\r\n"
        "To: Jürgen Müller <jürgen@example.org>\r\n"
        "Subject: Grüße aus Köln ✓\r\n"
        "\r\n"
        "Schöne Grüße — 東京\r\n"
    ).encode()

    assert verifies(signed(message, algorithm), algorithm)
    assert not verifies(
        replace_once(signed(message, algorithm), "Köln".encode(), b"Bonn"), algorithm
    )


def test_typical_mime_message_verifies() -> None:
    assert verifies(signed(MIME_MESSAGE))


# -- The field itself.


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_tags(algorithm: Algorithm) -> None:
    field = dkim.signature_field(MESSAGE, signing_key(algorithm), time.time())

    found = tags(field)

    assert set(found) == {"v", "a", "c", "d", "s", "t", "h", "bh", "b"}  # no l=, no x=
    assert found["v"] == "1"
    assert found["a"] == f"{algorithm.value}-sha256"
    assert found["c"] == "relaxed/relaxed"
    assert (found["d"], found["s"]) == (DOMAIN, SELECTOR)


def test_t_is_now_in_whole_seconds() -> None:
    field = dkim.signature_field(MESSAGE, signing_key(), 1_767_225_600.99)

    assert tags(field)["t"] == "1767225600"


def listed(present: dict[str, int]) -> list[str]:
    """h= for these field counts: SIGNED_FIELDS order, over-signed ones once more."""
    return [
        name
        for name in dkim.SIGNED_FIELDS
        for _ in range(present.get(name, 0) + (name in dkim.OVERSIGNED_FIELDS))
    ]


def test_h_lists_each_present_field_and_oversigns_from_to_cc_subject_reply_to() -> None:
    field = dkim.signature_field(MESSAGE, signing_key(), time.time())

    # Received and X-Mailer are present but not signed; Cc and Reply-To are absent
    # but listed once, so that none can be added.
    assert header_list(field) == [
        "from", "from", "to", "to", "cc", "subject", "subject", "date", "message-id", "reply-to",
    ]  # fmt: skip


@pytest.mark.parametrize("name", [f for f in dkim.SIGNED_FIELDS if f != "from"])
def test_each_signed_field_is_listed_once_per_instance_and_verifies(name: str) -> None:
    field = f"{name.title()}: value one\r\n{name.title()}: value two\r\n".encode()
    message = b"From: sales@example.com\r\n" + field + b"\r\nbody\r\n"

    result = signed(message)

    assert header_list(result) == listed({"from": 1, name: 2})
    assert verifies(result)
    assert not verifies(replace_once(result, b"value two", b"value 2"))


def test_h_counts_field_names_case_insensitively() -> None:
    message = b"FROM: sales@example.com\r\nto: a@example.org\r\nTO: b@example.org\r\n\r\nbody\r\n"

    result = signed(message)

    assert header_list(result) == listed({"from": 1, "to": 2})
    assert verifies(result)


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_field_is_folded_header_syntax(algorithm: Algorithm) -> None:
    """Every signed field present: the longest h= the relay makes."""
    fields = "".join(f"{name.title()}: x\r\n" for name in dkim.SIGNED_FIELDS)
    field = dkim.signature_field(fields.encode() + b"\r\nbody\r\n", signing_key(algorithm), 0)

    assert field.startswith(b"DKIM-Signature: v=1;")
    assert field.endswith(b"\r\n")
    lines = field[:-2].split(b"\r\n")
    assert all(len(line) <= 78 for line in lines), [len(line) for line in lines]
    assert all(line[:1] in (b" ", b"\t") for line in lines[1:])  # continuation lines
    assert b"\r" not in field.replace(b"\r\n", b"") and b"\n" not in field.replace(b"\r\n", b"")
    assert field.isascii()


def test_folding_never_splits_a_field_name_in_h() -> None:
    field = dkim.signature_field(MIME_MESSAGE, signing_key(), time.time())
    unfolded = field.decode("ascii").replace("\r\n", "")
    h_value = re.search(r"[;\s]h=([^;]*);", unfolded)
    assert h_value is not None

    names = [name.strip() for name in h_value.group(1).split(":")]

    assert all(re.fullmatch(r"[!-9;-~]+", name) for name in names), names


def test_fold_is_dkimpys_fold() -> None:
    """Ours is linear; the output must be the same, byte for byte."""
    random = Random(6376)  # noqa: S311 -- reproducible test inputs
    words = [b"to", b":", b"from", b"x" * 80, b"bh=" + b"A" * 44, b"a;", b""]
    for _ in range(3_000):
        value = b" ".join(random.choices(words, k=random.randint(0, 40)))
        name_length = random.choice([0, 16])
        assert dkim.fold(value, name_length) == dkimpy.fold(value, name_length), value


def test_thousands_of_signed_fields_sign_and_verify() -> None:
    message = b"From: sales@example.com\r\n" + b"To: a@example.org\r\n" * 5_000 + b"\r\nbody\r\n"

    result = signed(message)

    assert header_list(result).count("to") == 5_001  # each instance, and one more
    assert verifies(result)


@pytest.mark.parametrize(
    "field",
    [
        pytest.param(b"X-Mailer: shop 1.0", id="unsigned"),
        pytest.param(b"Subject: Your order 42", id="signed"),
    ],
)
def test_space_before_the_colon_signs_as_relaxed_canonicalization_reads_it(field: bytes) -> None:
    """``Name : value`` (RFC 5322 4.5.8) canonicalizes as ``name:value`` (RFC 6376 3.4.2).

    dkimpy's own parser refuses that form, so the check verifies the signed
    message with the space taken out: relaxed canonicalization must not see
    a difference.
    """
    name, value = field.split(b": ", 1)
    obsolete = name + b" : " + value
    message = replace_once(MESSAGE, field, obsolete)

    result = signed(message)

    assert verifies(replace_once(result, obsolete, field))


# -- Keys.


def test_rsa_pkcs1_pem_loads_and_signs() -> None:
    pem = private_key(Algorithm.RSA).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )
    assert pem.startswith(b"-----BEGIN RSA PRIVATE KEY-----")

    key = dkim.load_private_key(pem)

    assert verifies(dkim.sign(MESSAGE, SigningKey(DOMAIN, SELECTOR, key), time.time()))


@pytest.mark.parametrize("algorithm", list(Algorithm))
def test_private_pem_round_trips(algorithm: Algorithm) -> None:
    pem = dkim.private_pem(private_key(algorithm))

    key = dkim.load_private_key(pem)

    assert pem.startswith(b"-----BEGIN PRIVATE KEY-----")  # PKCS#8, unencrypted
    assert dkim.txt_record(key) == dkim.txt_record(private_key(algorithm))


def rsa_512_pem() -> bytes:
    e = 65537
    d = pow(e, -1, (P512 - 1) * (Q512 - 1))
    numbers = rsa.RSAPrivateNumbers(
        P512, Q512, d,
        rsa.rsa_crt_dmp1(d, P512), rsa.rsa_crt_dmq1(d, Q512), rsa.rsa_crt_iqmp(P512, Q512),
        rsa.RSAPublicNumbers(e, P512 * Q512),
    )  # fmt: skip
    return dkim.private_pem(numbers.private_key())


def encrypted_pem() -> bytes:
    return private_key(Algorithm.RSA).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"passphrase"),
    )


def ec_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


@pytest.mark.parametrize(
    ("make_pem", "message"),
    [
        pytest.param(lambda: b"not a key at all\n", "not a PEM private key", id="garbage"),
        pytest.param(lambda: b"", "not a PEM private key", id="empty"),
        pytest.param(
            lambda: dkim.txt_record(private_key(Algorithm.RSA)).encode(),
            "not a PEM private key",
            id="txt-record",
        ),
        pytest.param(encrypted_pem, "needs a passphrase", id="passphrase"),
        pytest.param(rsa_512_pem, "RSA key of 512 bits; DKIM needs 1024 or more", id="rsa-512"),
        pytest.param(ec_pem, "unsupported key type", id="ec-p256"),
    ],
)
def test_unusable_keys_are_refused_clearly(make_pem: Callable[[], bytes], message: str) -> None:
    with pytest.raises(KeyProblem, match=re.escape(message)):
        dkim.load_private_key(make_pem())


def test_public_pem_is_not_a_private_key() -> None:
    public = (
        private_key(Algorithm.RSA)
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )

    with pytest.raises(KeyProblem, match="not a PEM private key"):
        dkim.load_private_key(public)


# -- The record to publish.


def quoted_strings(zone_line: str) -> list[str]:
    return re.findall(r'"([^"]*)"', zone_line)


def test_rsa_2048_record_is_published_as_several_strings_that_join_back() -> None:
    record = dkim.txt_record(private_key(Algorithm.RSA))

    line = dkim.zone_line(DOMAIN, SELECTOR, record)

    assert record.startswith("v=DKIM1; k=rsa; p=")
    assert line.startswith(f'{RECORD_NAME} 3600 IN TXT "')
    strings = quoted_strings(line)
    assert len(strings) == 2
    assert all(len(s.encode()) <= 255 for s in strings)
    assert "".join(strings) == record


def test_rsa_p_is_the_der_public_key() -> None:
    key = private_key(Algorithm.RSA)
    assert isinstance(key, rsa.RSAPrivateKey)
    p = dkim.txt_record(key).split("p=", 1)[1]

    public = serialization.load_der_public_key(base64.b64decode(p, validate=True))

    assert isinstance(public, rsa.RSAPublicKey)
    assert public.public_numbers() == key.public_key().public_numbers()


def test_ed25519_record_is_the_raw_32_byte_key() -> None:
    key = private_key(Algorithm.ED25519)
    record = dkim.txt_record(key)

    assert record.startswith("v=DKIM1; k=ed25519; p=")
    raw = base64.b64decode(record.split("p=", 1)[1], validate=True)
    assert len(raw) == 32
    assert raw == key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    assert quoted_strings(dkim.zone_line(DOMAIN, SELECTOR, record)) == [record]


@pytest.mark.parametrize(
    ("length", "sizes"), [(0, [0]), (1, [1]), (255, [255]), (256, [255, 1]), (600, [255, 255, 90])]
)
def test_txt_strings_cut_at_255(length: int, sizes: list[int]) -> None:
    value = "x" * length

    strings = dkim.txt_strings(value)

    assert [len(s) for s in strings] == sizes
    assert "".join(strings) == value
